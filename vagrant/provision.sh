#!/usr/bin/env bash
# Provision one lab machine (as root, from the Vagrantfile): the system tools fwtrace drives,
# from the distribution's own packages, fwtrace in /opt/fwtrace-venv (the fwtrace command in
# /usr/bin), and on the server the test suite (unit and kernel tiers) against this
# machine's own kernel. Debian gets scripts/setup's list, Ubuntu what of it is a .deb there; the
# RHEL family has its own package names.
set -euo pipefail
role=${FWTRACE_ROLE:-server}
. /etc/os-release

case " ${ID} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # scripts/setup's list where the distribution has it: Ubuntu's chromium is a snap and its
    # bpftool comes with linux-tools, so the tests that need them fail there (README)
    extra=(ipset "linux-headers-$(uname -r)")
    [ "$ID" = debian ] && extra+=(bpftool chromium)
    apt-get install -y -qq --no-install-recommends iptables nftables conntrack iproute2 procps \
      python3-venv python3-pip python3-bpfcc curl "${extra[@]}" >/dev/null
    ;;
  *" rhel "*|*" fedora "*|*" centos "*)
    # iptables-nft is RHEL 9's iptables; iptables-legacy is not shipped there (the legacy
    # kernel-log tests then fail: they are about a backend this distribution does not have).
    dnf install -y -q iptables-nft nftables conntrack-tools iproute procps-ng python3 python3-pip \
      python3-bcc curl ipset bpftool "kernel-devel-$(uname -r)"
    ;;
  *)
    echo "provision.sh: unsupported distribution $ID" >&2
    exit 3
    ;;
esac

venv=/opt/fwtrace-venv
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '/vagrant[test]'
# /usr/bin, not /usr/local/bin: RHEL's sudo keeps a secure_path without /usr/local/bin, and
# two-host.sh runs `sudo fwtrace` (a throwaway lab machine, so outside the package manager is fine)
ln -sf "$venv/bin/fwtrace" /usr/bin/fwtrace
/usr/bin/fwtrace --help >/dev/null
echo "provision.sh: fwtrace installed on $(hostname) ($PRETTY_NAME, kernel $(uname -r))"

if [ "$role" = server ] && [ "${FWTRACE_RUN_TESTS:-1}" = 1 ]; then
  cd /vagrant
  # The synced folder is a copy: pytest's cache and bytecode stay in this machine's copy.
  CI=true "$venv/bin/python" -m pytest -q -p no:cacheprovider --timeout 600 tests
fi

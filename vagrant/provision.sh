#!/usr/bin/env bash
# Provision one lab machine (as root, from the Vagrantfile): the system tools fwtrace drives,
# from the distribution's own packages, fwtrace in /opt/fwtrace-venv (the fwtrace command in
# /usr/local/bin), and on the server the test suite (unit and kernel tiers) against this
# machine's own kernel. Debian and Ubuntu use scripts/setup's list; the RHEL family has its
# own package names.
set -euo pipefail
role=${FWTRACE_ROLE:-server}
. /etc/os-release

case " ${ID} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iptables nftables conntrack iproute2 procps \
      python3-venv python3-pip python3-bpfcc curl >/dev/null
    ;;
  *" rhel "*|*" fedora "*|*" centos "*)
    # iptables-nft is RHEL 9's iptables; iptables-legacy is not shipped there (the legacy
    # kernel-log tests then fail: they are about a backend this distribution does not have).
    dnf install -y -q iptables-nft nftables conntrack-tools iproute procps-ng python3 python3-pip \
      python3-bcc curl
    ;;
  *)
    echo "provision.sh: unsupported distribution $ID" >&2
    exit 3
    ;;
esac

venv=/opt/fwtrace-venv
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '/vagrant[test]'
ln -sf "$venv/bin/fwtrace" /usr/local/bin/fwtrace
fwtrace --help >/dev/null
echo "provision.sh: fwtrace installed on $(hostname) ($PRETTY_NAME, kernel $(uname -r))"

if [ "$role" = server ] && [ "${FWTRACE_RUN_TESTS:-1}" = 1 ]; then
  cd /vagrant
  # The synced folder is a copy: pytest's cache and bytecode stay in this machine's copy.
  CI=true "$venv/bin/python" -m pytest -q -p no:cacheprovider --timeout 600 tests
fi

#!/usr/bin/env bash
# The ticket on two real machines of the lab (run on the Vagrant host, after
# `vagrant up DISTRO-server DISTRO-client`): the server rejects port 8080 on its private
# interface before the rule meant to accept it; the client's connection fails; fwtrace on the
# server, asked about the client's address (--src) and the server's own (--dst), names the
# rule; the shadowing REJECT is deleted; the client connects. The server's firewall is restored
# at the end (the lab's rules carry the comment fwtrace-lab).
#
# usage: vagrant/two-host.sh [debian|ubuntu|rhel]
set -euo pipefail
cd "$(dirname "$0")"
distro=${1:-debian}
case $distro in
  debian) net=192.168.56 ;;
  ubuntu) net=192.168.57 ;;
  rhel) net=192.168.58 ;;
  *) echo "usage: $0 [debian|ubuntu|rhel]" >&2; exit 2 ;;
esac
server=$net.10 client=$net.11
on() { local vm=$1; shift; vagrant ssh "$distro-$vm" -c "sudo bash -c $(printf %q "$*")"; }

cleanup() {
  on server "iptables-save | grep -v fwtrace-lab | iptables-restore; pkill -f 'http.server 8080' || true" || true
}
trap cleanup EXIT

echo "== server $server: listener on 8080, and the shadowing rule on the private interface"
on server "dev=\$(ip -o -4 addr show to $server | awk '{print \$2}')
  iptables -I INPUT 1 -i \$dev -p tcp --dport 8080 -m comment --comment fwtrace-lab -j REJECT --reject-with icmp-host-prohibited
  iptables -I INPUT 2 -i \$dev -p tcp --dport 8080 -m comment --comment fwtrace-lab -j ACCEPT
  (setsid python3 -m http.server 8080 >/dev/null 2>&1 &)"

echo "== client $client: connect to $server:8080 (expected to fail)"
if on client "curl -sS --max-time 5 -o /dev/null http://$server:8080/"; then
  echo "two-host: the client connected although the server rejects it" >&2
  exit 1
fi

echo "== server: fwtrace probe --dport 8080 --src $client --dst $server"
rc=0
on server "fwtrace probe --dport 8080 --src $client --dst $server" || rc=$?
[ "$rc" = 1 ] || { echo "two-host: fwtrace exited $rc, expected 1 (blocked)" >&2; exit 1; }
on server "fwtrace probe --dport 8080 --src $client --dst $server --json" >/tmp/fwtrace-two-host.json || true
grep -q '"verdict": "reject"' /tmp/fwtrace-two-host.json \
  || { echo "two-host: the JSON report does not say reject" >&2; exit 1; }

echo "== server: apply the lab's fix (delete the shadowing REJECT), client connects"
on server "dev=\$(ip -o -4 addr show to $server | awk '{print \$2}')
  iptables -D INPUT -i \$dev -p tcp --dport 8080 -m comment --comment fwtrace-lab -j REJECT --reject-with icmp-host-prohibited"
on client "curl -sS --max-time 5 -o /dev/null http://$server:8080/"
on server "fwtrace probe --dport 8080 --src $client --dst $server"
echo "two-host: ok on $distro"

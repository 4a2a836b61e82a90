"""A throwaway lab of network namespaces: the demo's world and the integration tests' fixture.

client (eth0 192.0.2.2) --- (eth0 192.0.2.1) server [(eth1 198.51.100.1) --- (eth0 198.51.100.2) backend]

Addresses come from the documentation ranges and exist only inside namespaces this module
created; deleting a namespace deletes its links, so nothing of the host is touched.
"""
from __future__ import annotations

import ipaddress
import os
import shlex
from typing import Any, Optional

from tracer import system
from tracer.system import serve
from tracer.errors import ExitStatus
from tracer.model import Proto

SERVER4, CLIENT4 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
SERVER6, CLIENT6 = ipaddress.ip_address("2001:db8:1::1"), ipaddress.ip_address("2001:db8:1::2")
ROUTER_BACK4, BACKEND4 = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.2")
ROUTER_BACK6, BACKEND6 = ipaddress.ip_address("2001:db8:2::1"), ipaddress.ip_address("2001:db8:2::2")

# The seed's firewall (a RHEL/CentOS default plus fail2ban), with the ACCEPT for 8080 appended
# after the catch-all REJECT: rule 8 is never reached.
SEED_RULESET = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:fail2ban-SSH - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j fail2ban-SSH
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 80 -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 443 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
-A fail2ban-SSH -s 117.239.37.150/32 -j REJECT --reject-with icmp-port-unreachable
-A fail2ban-SSH -s 117.253.208.237/32 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


def published_port(filter_rules: str = "", forward_policy: str = "DROP") -> str:
    """A Docker-style published port on the server: 8080 DNATed to the backend's port 80,
    with FORWARD under the given policy and extra filter lines (iptables-restore input)."""
    return (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        f"-A PREROUTING -d {SERVER4}/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {BACKEND4}:80\nCOMMIT\n"
        f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {forward_policy} [0:0]\n:OUTPUT ACCEPT [0:0]\n{filter_rules}COMMIT\n"
    )


class Lab:
    """Namespaces `<prefix>-<id>-{srv,cli[,bak]}`; use as a context manager."""

    def __init__(self, prefix: str = "fwtrace-lab", backend: bool = False) -> None:
        rid = os.urandom(3).hex()
        self.server = f"{prefix}-{rid}-srv"
        self.client = f"{prefix}-{rid}-cli"
        self.backend: Optional[str] = f"{prefix}-{rid}-bak" if backend else None
        self._sockets: list[Any] = []  # tracer.system.serve.listen's sockets
        self._created: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [n for n in (self.server, self.client, self.backend) if n]

    def __enter__(self) -> "Lab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ip(self, ns: str, *args: str) -> None:
        system.run(["ip", "-n", ns, *args])

    def _link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        system.run(["ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b])
        for ns, ifname in ((a, a_if), (b, b_if)):
            self.ip(ns, "link", "set", ifname, "up")

    def _addr(self, ns: str, ifname: str, addr: Any, plen: int) -> None:
        extra = ["nodad"] if addr.version == 6 else []
        self.ip(ns, "addr", "add", f"{addr}/{plen}", "dev", ifname, *extra)

    def _build(self) -> None:
        for ns in self.namespaces:
            system.run(["ip", "netns", "add", ns])
            self._created.append(ns)
            self.ip(ns, "link", "set", "lo", "up")
        self._link(self.client, "eth0", self.server, "eth0")
        self._addr(self.client, "eth0", CLIENT4, 24)
        self._addr(self.server, "eth0", SERVER4, 24)
        self._addr(self.client, "eth0", CLIENT6, 64)
        self._addr(self.server, "eth0", SERVER6, 64)
        if self.backend:
            self._link(self.server, "eth1", self.backend, "eth0")
            self._addr(self.server, "eth1", ROUTER_BACK4, 24)
            self._addr(self.backend, "eth0", BACKEND4, 24)
            self._addr(self.server, "eth1", ROUTER_BACK6, 64)
            self._addr(self.backend, "eth0", BACKEND6, 64)
            self.ip(self.backend, "route", "add", "default", "via", str(ROUTER_BACK4))
            self.ip(self.backend, "-6", "route", "add", "default", "via", str(ROUTER_BACK6))
            with system.netns(self.server):  # per-namespace sysctls: the host's stay as they are
                system.sysctl_set("net.ipv4.ip_forward", "1")
                system.sysctl_set("net.ipv6.conf.all.forwarding", "1")

    def run(self, ns: str, argv: list[str], input: Optional[str] = None) -> system.Completed:
        with system.netns(ns):
            return system.run(argv, input=input)

    def iptables_restore(self, ns: str, rules: str, ipv6: bool = False, legacy: bool = False) -> None:
        tool = ("ip6tables" if ipv6 else "iptables") + ("-legacy" if legacy else "") + "-restore"
        self.run(ns, [tool], input=rules)

    def nft(self, ns: str, rules: str) -> None:
        self.run(ns, ["nft", "-f", "-"], input=rules)

    def listen(self, ns: str, proto: Proto, port: int, addr: str = "::") -> None:
        """A socket listening (TCP) or answering (UDP echo) in ns until the lab closes."""
        self._sockets.append(serve.listen(ns, proto is Proto.TCP, port, addr))

    def close(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        for ns in reversed(self._created):
            try:
                system.run(["ip", "netns", "del", ns])
            except Exception:
                pass
        self._created.clear()


CUSTOMER4 = ipaddress.ip_address("203.0.113.5")


def demo(log: Any, as_json: bool = False, color: Optional[bool] = None) -> int:
    """The seed's story, end to end: port 8080 is closed for a customer, why, and the fix proven.

    First on the server alone (simulated ingress: the customer's SYN arrives on eth0), then the
    fix is applied inside the lab and a real second host (the client namespace) tries again.
    """
    import json
    import sys

    from tracer.pipeline import provefix
    from tracer.model import ProbeRequest
    from tracer.pipeline.driver import Run
    from tracer.render import jsondoc, terminal

    def show(report: Any) -> None:
        terminal.render(report, terminal.make_console(sys.stdout, color=color))
        print()

    system.require_root()
    with Lab() as lab:
        lab.iptables_restore(lab.server, SEED_RULESET)
        lab.listen(lab.server, Proto.TCP, 8080)
        # The customer is reached through the client host, as through a gateway.
        lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
        log.info("lab ready", server=lab.server, client=lab.client, listener="tcp [::]:8080")
        alone = ProbeRequest(dport=8080, proto=Proto.TCP, netns=lab.server, src=CUSTOMER4, dst=SERVER4)
        # --prove-fix: the fix is tried for the customer's flow alone before it is suggested.
        before, steps = provefix.prove(Run(alone, log).execute(), log, provefix.runner(log))
        fix = next((f for f in before.findings if f.code == "shadowed-rule" and f.proven), None)
        if as_json:
            sys.stdout.write(json.dumps(provefix.to_json(jsondoc.document(before), steps), indent=2) + "\n")
        else:
            print("$ iptables -S INPUT   # in the server namespace\n" + lab.run(lab.server, ["iptables", "-S", "INPUT"]).stdout)
            print(f"# Customer {CUSTOMER4} cannot reach port 8080. On the server alone:")
            print(f"$ fwtrace probe --dport 8080 --src {CUSTOMER4} --netns {lab.server} --prove-fix")
            sys.stdout.flush()
            show(before)
            print(provefix.render(steps, before.reached))
        if fix is None:
            print("demo: fwtrace did not find (or could not prove) the fix of the shadowed rule", file=sys.stderr)
            return ExitStatus.BLOCKED
        for command in fix.commands:
            if not as_json:
                print(f"$ {command}   # applying the suggested fix inside the lab")
            lab.run(lab.server, shlex.split(command))
        remote = ProbeRequest(dport=8080, proto=Proto.TCP, netns=lab.server, from_netns=lab.client, dst=SERVER4)
        after = Run(remote, log).execute()
        if not as_json:
            print(f"\n# And from a real second host (namespace {lab.client}) after the fix:")
            print(f"$ fwtrace probe --dport 8080 --netns {lab.server} --from-netns {lab.client}")
            sys.stdout.flush()
            show(after)
        if not (before.cleanup_ok and after.cleanup_ok):
            return ExitStatus.LEFTOVER  # the reports name what is left
        return ExitStatus.OK if after.reached and not before.reached else ExitStatus.BLOCKED

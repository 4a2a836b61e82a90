"""TCP wrappers: hosts_access(5) decisions on hosts.allow / hosts.deny text, and the
closed-after-accept finding they feed."""
from __future__ import annotations

import ipaddress

from tracer import diagnose
from tracer.diagnose import tcpwrap
from tracer.diagnose.context import Context
from tracer.model import AfterAccept, PacketResult, PacketSpec, Proto, Reply, Ruleset, Verdict

C = ipaddress.ip_address("192.0.2.2")


def test_allow_is_read_first_and_the_first_line_wins() -> None:
    deny = "# comment\nsshd: ALL\n"
    d = tcpwrap.decide("sshd: 192.0.2.\n", deny, ("sshd",), C)
    assert d.granted and d.line is not None and (d.line.file, d.line.number) == ("/etc/hosts.allow", 1)
    d = tcpwrap.decide("", deny, ("sshd",), C)
    assert not d.granted and d.said() == "/etc/hosts.deny line 2 `sshd: ALL`"
    assert tcpwrap.decide("", deny, ("vsftpd",), C).granted  # another daemon
    assert tcpwrap.decide("", "", ("sshd",), C).said() == "no line of hosts.allow or hosts.deny matches (granted)"


def test_client_patterns() -> None:
    m = tcpwrap.client_matches
    assert m("ALL", C) and m("192.0.2.2", C) and m("192.0.2.", C) and not m("192.0.20.", C)
    assert m("192.0.2.0/255.255.255.0", C) and m("192.0.2.0/24", C) and not m("198.51.100.0/24", C)
    assert m("[2001:db8::]/32", ipaddress.ip_address("2001:db8::5"))
    assert m("example.org", C) is None and m("LOCAL", C) is None and m(".example.org", C) is None


def test_except_continuations_and_options() -> None:
    deny = "ALL: 192.0.2.0/24 EXCEPT 192.0.2.2\nsshd, vsftpd: \\\n  192.0.2.2\n"
    d = tcpwrap.decide("", deny, ("sshd",), C)
    assert not d.granted and d.line is not None and d.line.number == 2  # the continued line, by its first
    d = tcpwrap.decide("sshd: 192.0.2.2 : deny\n", "", ("sshd",), C)  # PROCESS_OPTIONS: deny in hosts.allow
    assert not d.granted and d.line is not None and d.line.file == "/etc/hosts.allow"
    d = tcpwrap.decide("", "sshd: badhost.example 192.0.2.2\n", ("sshd",), C)
    assert not d.granted and d.unsure == ("badhost.example",)


def test_closed_after_accept_finding() -> None:
    spec = PacketSpec(Proto.TCP, C, ipaddress.ip_address("192.0.2.1"), 40000, 22, "S", 7)

    def findings(a: AfterAccept) -> list[str]:
        r = PacketResult(spec, Verdict.ACCEPT, None, Reply("syn-ack"), (), ("prerouting", "input"), after_accept=a)
        fs = diagnose.diagnose(r, Context(Ruleset(), (), local=False))
        assert not diagnose.reached(r, fs) or a.seen not in ("closed", "reset")
        return [f.message + " | " + (f.fix or "") for f in fs if f.code == "closed-after-accept"]

    [denied] = findings(AfterAccept("closed", "pid 9 (sshd)", True, "/etc/hosts.deny line 3 `sshd: ALL`", True, "sshd"))
    assert "pid 9 (sshd) refused the client" in denied and "/etc/hosts.deny line 3" in denied
    assert "add `sshd: 192.0.2.2` to /etc/hosts.allow" in denied
    [own] = findings(AfterAccept("reset", "pid 9 (myapp)", False, None, None, "myapp"))
    assert "does not use TCP wrappers" in own and "myapp's own access rules" in own
    assert findings(AfterAccept("data", "pid 9 (sshd)", True)) == []
    assert findings(AfterAccept("open")) == []

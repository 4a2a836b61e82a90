"""SELinux's part in a closed port (tracer/diagnose/selinux.py) on captured tool output.

SELinux cannot run on this Debian host (its kernel is built without it, and Debian's userland has no
policy loaded): the samples under tests/data/selinux/ are written from the tools' documented
formats (semanage-port(8)'s listing, auditd's AVC records as audit.log and `ausearch -m AVC` print
them, as on RHEL 9), not captured here. tests/kernel/test_service.py checks that nothing is said
where SELinux is absent."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from tracer.diagnose import Context, diagnose
from tracer.diagnose import selinux as se
from tracer.model import PacketResult, PacketSpec, Proto, Reply, Ruleset, Verdict

DATA = Path(__file__).parents[1] / "data" / "selinux"
LABELS = (DATA / "semanage-port-l.txt").read_text()
AUDIT = (DATA / "audit-avc.log").read_text()


def test_semanage_listing() -> None:
    labels = se.parse_semanage_ports(LABELS)
    assert se.PortLabel("ssh_port_t", "tcp", ((22, 22),)) in labels
    assert se.PortLabel("unreserved_port_t", "tcp", ((61000, 65535), (1024, 32767))) in labels
    t = tuple(labels)
    assert se.label_of(t, Proto.TCP, 2222) == "unreserved_port_t"
    assert se.label_of(t, Proto.TCP, 10005) == "http_cache_port_t"  # a range of its own before unreserved's
    assert se.label_of(t, Proto.UDP, 53) == "dns_port_t" and se.label_of(t, Proto.TCP, 1000) is None


def test_avc_lines() -> None:
    ds = se.parse_avc(AUDIT)
    assert [(d.perms, d.comm, d.port, d.domain, d.target, d.tclass) for d in ds] == [
        (("name_bind",), "sshd", 2222, "sshd_t", "unreserved_port_t", "tcp_socket"),
        (("name_bind",), "httpd", 8081, "httpd_t", "transproxy_port_t", "tcp_socket"),
        (("name_connect",), "httpd", 5432, "httpd_t", "postgresql_port_t", "tcp_socket"),
    ]  # the file denial has no port; named's permissive=1 denial refused nothing
    assert se.parse_avc((DATA / "ausearch-m-avc.txt").read_text())[0].port == 2222


def test_absent_or_permissive_says_nothing() -> None:
    assert se.facts(None, LABELS, AUDIT, "x") is None  # no /sys/fs/selinux
    assert se.facts("0", LABELS, AUDIT, "x") is None  # permissive: denials are logged, not enforced
    assert se.decide(None, Proto.TCP, 2222) is None


def test_denied_bind_on_an_unlabelled_port() -> None:
    sel = se.facts("1\n", LABELS, AUDIT, "/var/log/audit/audit.log")
    assert sel is not None
    f = se.decide(sel, Proto.TCP, 2222)
    assert f is not None and f.code == "selinux"
    assert "denied sshd (sshd_t) { name_bind } on tcp/2222" in f.message
    assert "`semanage port -l` labels tcp/2222 unreserved_port_t, not ssh_port_t, the port type sshd_t may use (tcp/22)" \
        in f.message
    assert f.fix == "label the port for the service: semanage port -a -t ssh_port_t -p tcp 2222, then restart sshd"
    g = se.decide(sel, Proto.TCP, 8081)  # a port the policy names by itself: modify, not add
    assert g is not None and g.fix is not None and "semanage port -m -t http_port_t -p tcp 8081" in g.fix
    assert se.decide(sel, Proto.TCP, 8080) is None  # no denial names it: nothing said
    assert se.decide(sel, Proto.UDP, 2222) is None


def test_finding_in_the_diagnosis() -> None:
    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 40000, 2222)
    r = PacketResult(spec, Verdict.ACCEPT, None, Reply("rst"), (), ("prerouting", "input"))
    sel = se.facts("1", LABELS, AUDIT, "ausearch -m AVC -ts today")
    codes = [f.code for f in diagnose(r, Context(Ruleset(), (), False, selinux=sel))]
    assert "selinux" in codes and "no-listener" in codes
    assert "selinux" not in [f.code for f in diagnose(r, Context(Ruleset(), (), False))]
    from tracer.diagnose import conclusion

    fs = diagnose(r, Context(Ruleset(), (), False, selinux=sel))
    assert conclusion(r, fs) == "The firewall lets tcp port 2222 through, but SELinux denied the service that port (see selinux)."

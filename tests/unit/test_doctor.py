"""`fwtrace doctor`'s pure part: rendering the facts and what fwtrace will therefore do."""
from __future__ import annotations

from tracer.pipeline.doctor import Facts, backends, plan
from tracer.pipeline.doctor import render as render_doctor
from tracer.pipeline.doctor import verdict as doctor_verdict

# --- doctor ----------------------------------------------------------------------------------


def facts(**kw: object) -> Facts:
    base = dict(kernel="6.18", root=True, nft="nftables v1.0.6", iptables="iptables v1.8.9 (nf_tables)",
                nftables_works=True, nf_log={"2": "NONE", "10": "NONE"}, nf_log_all_netns="0", btf=5520272,
                tracefs="/sys/kernel/tracing", tracepoints={"skb/kfree_skb": True, "icmp/icmp_send": False},
                drop_reasons=127, kprobes=False, fentry="refused: EPERM", bcc="0.26.0", headers="Debian's",
                headers_kind="debian", netdev_hooks=True)
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_doctor_rendering() -> None:
    f = facts()
    text = render_doctor(f)
    assert "kprobes           absent (CONFIG_KPROBES not set)" in text
    assert "icmp/icmp_send (absent)" in text
    assert text.rstrip().endswith("probing works") and doctor_verdict(f)
    assert "not traced (kprobes absent, fentry refused: EPERM)" in " ".join(plan(f))
    assert "through kprobe/kretprobe" in " ".join(plan(facts(kprobes=True)))
    no = facts(root=False, bcc=None)
    assert not doctor_verdict(no) and "probing does NOT work here" in render_doctor(no)
    assert "missing: bcc" in " ".join(plan(no))


def test_backends_in_use() -> None:
    assert backends(facts()) == "none (no tables)"
    assert backends(facts(nft_tables=("ip filter",), legacy_tables=("ip raw",))) == \
        "nf_tables (ip filter); iptables-legacy (ip raw)"

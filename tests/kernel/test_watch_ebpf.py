"""`fwtrace watch --ebpf` against the real kernel: a real client's loop of connects that the
server's strict reverse-path filter drops (its route back to the client is by eth1, not eth0 where
the client's packets arrive, as in test_kernel_verdicts.py) shows as a flow with the kernel's
verdict with eBPF on, stays as before with --ebpf off, and traffic outside the filter gives no
eBPF event although the kernel drops it too."""
from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from tracer import system
from tracer.cli.lab import BACKEND4, CLIENT4, SERVER4, Lab
from tracer.model import Proto

from tests.kernel.test_kernel_verdicts import ebpf  # noqa: F401  (the eBPF prerequisites: missing ones fail in CI)
from tests.kernel.test_watch import client, run_dir, state, summary, watch  # noqa: F401


@pytest.fixture
def rp_dropped(router_lab: Lab) -> Iterator[Lab]:
    """The server's route back to the client is by eth1 and its rp_filter strict: the client's
    packets arriving on eth0 are dropped by the kernel (IP_RPFILTER), after PREROUTING."""
    lab = router_lab
    lab.listen(lab.server, Proto.TCP, 9090)
    [link] = json.loads(lab.run(lab.server, ["ip", "-j", "link", "show", "dev", "eth0"]).stdout)
    # the client knows the server's MAC (the server answers no ARP of a client failing its rp_filter)
    lab.run(lab.client, ["ip", "neigh", "replace", str(SERVER4), "lladdr", link["address"], "dev", "eth0",
                         "nud", "permanent"])
    lab.ip(lab.server, "route", "add", f"{CLIENT4}/32", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):  # per-namespace sysctls of the lab's server (gone with it)
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    yield lab


def watched(lab: Lab, dport: int, ebpf: str, duration: str) -> tuple[int, dict[str, Any], str]:
    """A watch of the client's traffic to `dport` while the client loops connects to 9090."""
    c = client(lab, 9090)
    try:
        rc, docs, err = watch(lab, "--src", str(CLIENT4), "--dport", str(dport), "--duration", duration, "--ebpf", ebpf)
    finally:
        c.kill(), c.wait()
    return rc, summary(docs), err


def test_rp_filter_drop_of_a_real_client_is_a_kernel_verdict(rp_dropped: Lab, ebpf: str) -> None:  # noqa: F811
    before = state(rp_dropped)
    rc, s, err = watched(rp_dropped, 9090, ebpf, "2s")
    assert s["cleanup"]["ok"] and state(rp_dropped) == before, s
    assert s["flows"], (s, err)
    acc = s["accounting"]["ebpf"]
    if ebpf == "off":  # as before: no kernel verdict, nothing of eBPF
        assert acc == {"status": "off", "events": 0, "lost": 0}
        assert all(f["kernel"] is None and f["verdict"] != "drop" for f in s["flows"]), s["flows"]
        return
    assert rc == 1, err
    assert acc["status"] == "loaded" and acc["events"] >= 1 and acc["lost"] == 0, acc
    dropped = [f for f in s["flows"] if f["kernel"] is not None]
    assert dropped, s["flows"]
    f = dropped[0]
    k = f["kernel"]
    assert f["verdict"] == "drop" and f["src"] == str(CLIENT4) and f["dport"] == 9090
    assert k["kind"] == "kernel" and k["reason"] == "IP_RPFILTER" and k["cause"] == "reverse-path filter", k
    assert k["setting"] == "net.ipv4.conf.eth0.rp_filter=1", k
    assert "eBPF: drop reason IP_RPFILTER" in " ".join(k["evidence"]), k
    assert "dropped by the kernel: reverse-path filter" in f["decided_by"], f
    assert "rp-filter" in [x["code"] for x in f["findings"]], f["findings"]


def test_traffic_outside_the_filter_gives_no_ebpf_event(rp_dropped: Lab, ebpf: str) -> None:  # noqa: F811
    rc, s, err = watched(rp_dropped, 7071, ebpf, "1.5s")  # the client's drops are to 9090, not the filter's port
    want = "loaded" if ebpf == "on" else "off"
    assert s["accounting"]["ebpf"] == {"status": want, "events": 0, "lost": 0}, (s["accounting"], err)
    assert not s["flows"] and s["cleanup"]["ok"], s

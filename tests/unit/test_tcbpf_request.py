"""The cls_bpf filter request tracer/system/tcbpf.py builds by hand, read back by pyroute2's own
rtnetlink decoder (the library that sent it before): the fields and attributes of
`tc filter add dev IF ingress|egress pref P handle 1 protocol all bpf da fd FD name N`."""
from __future__ import annotations

import socket

import pytest
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from tracer.inject.ingress import ETH_P_ALL, FILTER_HANDLE, PARENT
from tracer.system import tcbpf


@pytest.mark.parametrize("direction,pref", [("ingress", 1), ("egress", 7), ("ingress", 65535)])
def test_the_request_is_the_filter_pyroute2_sent(direction: str, pref: int) -> None:
    m = tcmsg(tcbpf.filter_request(5, direction, pref, 42, "fwtrace_x1"))
    m.decode()
    assert m["header"]["type"] == tcbpf.RTM_NEWTFILTER
    flags = m["header"]["flags"]
    assert flags & tcbpf.NLM_F_CREATE and flags & tcbpf.NLM_F_EXCL and flags & tcbpf.NLM_F_ACK  # never replaces
    assert (m["index"], m["handle"], m["parent"]) == (5, FILTER_HANDLE, PARENT[direction])
    assert m["info"] == (pref << 16) | socket.htons(ETH_P_ALL)
    assert m.get_attr("TCA_KIND") == "bpf"
    opts = m.get_attr("TCA_OPTIONS")
    assert (opts.get_attr("TCA_BPF_FD"), opts.get_attr("TCA_BPF_NAME"), opts.get_attr("TCA_BPF_FLAGS")) == (42, "fwtrace_x1", 1)
    assert m["header"]["length"] == len(tcbpf.filter_request(5, direction, pref, 42, "fwtrace_x1"))

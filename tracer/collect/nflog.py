"""nfnetlink_log (NFLOG) messages: build the bind/config requests, parse logged packets. No I/O.

fwtrace's `--log` evidence rules use `-j NFLOG --nflog-group G --nflog-prefix fwtrace:<runid>:<n>`
by default: the packets come to a netlink socket of the target namespace (bound to group G),
with their real headers, and never reach the kernel log -- no dmesg noise, and no need for the
global nf_log_all_netns switch that LOG needs in a namespace. Message layout from
include/uapi/linux/netfilter/nfnetlink_log.h.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Mapping, Optional

from tracer.model import EventKind, TraceEvent
from tracer.packet import parse_headers
from tracer.collect.kernlog import KernContext, own_log_prefix
from tracer.collect.nftrace import attrs, messages

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
# enum nfulnl_attr_type
NFULA_PACKET_HDR, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_PAYLOAD, NFULA_PREFIX = 1, 4, 5, 9, 10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
COPY_RANGE = 128  # network + transport headers are all fwtrace reads


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * ((4 - n % 4) % 4)


def config_request(group: int, seq: int, command: Optional[int] = None, copy_range: int = 0) -> bytes:
    """One NFULNL_MSG_CONFIG request for `group`: a command (bind/unbind), or the copy mode with
    immediate delivery: by default an instance queues up to 100 packets or 1 s before it sends
    (NFULNL_QTHRESH_DEFAULT, NFULNL_TIMEOUT_DEFAULT in nfnetlink_log.c), which a probe cannot wait."""
    attrs = b""
    if command is not None:
        attrs += _nla(NFULA_CFG_CMD, struct.pack("B", command) + b"\0\0\0")
    if copy_range:
        attrs += _nla(NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0) + b"\0\0")
        attrs += _nla(NFULA_CFG_QTHRESH, struct.pack(">I", 1))
        attrs += _nla(NFULA_CFG_TIMEOUT, struct.pack(">I", 0))
    body = struct.pack(">BBH", 0, 0, group) + attrs  # nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id
    mtype = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def errors(data: bytes) -> list[int]:
    """The error codes of the NLMSG_ERROR acks in a datagram (0 means success)."""
    out = []
    for mtype, body in messages(data):
        if mtype == NLMSG_ERROR and len(body) >= 4:
            out.append(struct.unpack_from("=i", body)[0])
    return out


@dataclass(frozen=True)
class Logged:
    """One packet an NFLOG rule sent to the group."""

    family: int  # nfgen_family: 2 IPv4, 10 IPv6
    hook: Optional[str]
    prefix: str
    indev: Optional[int]
    outdev: Optional[int]
    payload: bytes  # from the network header on, up to COPY_RANGE bytes


def _ifindex(fields: Mapping[int, bytes], attr: int) -> Optional[int]:
    raw = fields.get(attr, b"")
    return int(struct.unpack(">I", raw)[0]) if len(raw) == 4 else None


def parse_packets(data: bytes) -> list[Logged]:
    """Every NFULNL_MSG_PACKET in one datagram read from the socket; anything else is skipped."""
    out = []
    for mtype, body in messages(data):
        if mtype != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET or len(body) < 4:
            continue
        fields = dict(attrs(body[4:]))
        hdr = fields.get(NFULA_PACKET_HDR, b"")
        hook = HOOKS.get(hdr[2]) if len(hdr) >= 3 else None

        prefix = fields.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
        out.append(Logged(body[0], hook, prefix, _ifindex(fields, NFULA_IFINDEX_INDEV), _ifindex(fields, NFULA_IFINDEX_OUTDEV),
                          fields.get(NFULA_PAYLOAD, b"")))
    return out


def to_event(p: Logged, ctx: KernContext, ifnames: Mapping[int, str] = {}) -> Optional[TraceEvent]:
    """A LOG event for a packet logged by one of this run's NFLOG rules, else None."""
    n = own_log_prefix(p.prefix, ctx.run_id)
    point = ctx.log_points.get(n) if n is not None else None
    h = parse_headers(p.payload)
    if point is None or h is None:
        return None
    port = h.sport if h.proto in (6, 17) else h.icmp_id
    # Grouped like the kernel-log lines of the same packet (kernlog.packet_key).
    from tracer.collect.kernlog import packet_key_of

    return TraceEvent(
        trace_id=packet_key_of(str(h.src), h.proto, port, h.ident), kind=EventKind.LOG, family=point.family,
        table=point.table, chain=point.chain, legacy=point.legacy, hook=p.hook, source="nflog",
        iif=ifnames.get(p.indev, f"if{p.indev}") if p.indev is not None else None,
        oif=ifnames.get(p.outdev, f"if{p.outdev}") if p.outdev is not None else None,
        packet=p.payload, text=f"NFLOG {p.prefix.strip()}",
    )

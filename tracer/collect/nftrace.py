"""Parse nftables trace notifications (NFT_MSG_TRACE) from raw nfnetlink bytes.

The kernel sends one message per rule match, chain return or policy decision of a packet whose
`nftrace` bit is set, to the multicast group NFNLGRP_NFTRACE of the packet's network namespace
(net/netfilter/nf_tables_trace.c). This module turns those bytes into `TraceEvent`s and reads the
packet headers the kernel attaches, so the caller can keep only its own probe packets. No I/O.
"""
from __future__ import annotations

import struct
from typing import Iterator, Mapping, Optional

from tracer.model import EventKind, TraceEvent

NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_TRACE = 17

# enum nft_trace_attributes (include/uapi/linux/netfilter/nf_tables.h)
A_TABLE, A_CHAIN, A_RULE_HANDLE, A_TYPE, A_VERDICT, A_ID = 1, 2, 3, 4, 5, 6
A_LL_HEADER, A_NETWORK_HEADER, A_TRANSPORT_HEADER, A_IIF = 7, 8, 9, 10
A_OIF, A_POLICY = 12, 16
# Linux 6.16+: the packet's conntrack entry at this step (NFTA_TRACE_CT_*)
A_CT_ID, A_CT_DIRECTION, A_CT_STATUS, A_CT_STATE = 18, 19, 20, 21
# NFTA_TRACE_CT_STATE bits, as `ct state` matches them (NF_CT_STATE_*_BIT)
_CT_STATES = ((64, "untracked"), (8, "new"), (4, "related"), (2, "established"), (1, "invalid"))
# enum nft_verdict_attributes
V_CODE, V_CHAIN = 1, 2

_KINDS = {1: EventKind.POLICY, 2: EventKind.RETURN, 3: EventKind.RULE}
# NF_DROP/NF_ACCEPT/... are >= 0 (low byte; QUEUE carries its number in the high bits);
# the nft-internal verdicts are negative.
_VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat",
             -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
# nfgenmsg.nfgen_family values (NFPROTO_*)
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

_NLA_TYPE_MASK = 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(nlmsg_type, body after the 16-byte nlmsghdr) of each whole message in a datagram."""
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if length < 16 or off + length > len(data):
            return
        yield mtype, data[off + 16 : off + length]
        off += (length + 3) & ~3


def attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink attribute (flags stripped from the type)."""
    off = 0
    while off + 4 <= len(buf):
        length, atype = struct.unpack_from("=HH", buf, off)
        if length < 4 or off + length > len(buf):
            return
        yield atype & _NLA_TYPE_MASK, buf[off + 4 : off + length]
        off += (length + 3) & ~3


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def _verdict(buf: bytes) -> Optional[str]:
    code: Optional[int] = None
    target = ""
    for t, v in attrs(buf):
        if t == V_CODE and len(v) >= 4:
            code = struct.unpack(">i", v[:4])[0]
        elif t == V_CHAIN:
            target = _cstr(v)
    if code is None:
        return None
    word = _VERDICTS.get(code if code < 0 else code & 0xFF, str(code))
    return f"{word} {target}" if target else word


def parse_messages(data: bytes, ifnames: Mapping[int, str] = {}) -> list[TraceEvent]:
    """Every trace notification in one datagram read from the netlink socket.

    Anything that is not NFT_MSG_TRACE (errors, other subsystems, truncated tails) is skipped:
    the socket is shared with nothing else, but the kernel may still report overruns.
    """
    events: list[TraceEvent] = []
    for mtype, body in messages(data):
        if mtype == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE) and len(body) >= 4:
            ev = _trace_event(body, ifnames)
            if ev is not None:
                events.append(ev)
    return events


def _trace_event(msg: bytes, ifnames: Mapping[int, str]) -> Optional[TraceEvent]:
    family = FAMILIES.get(msg[0], str(msg[0]))
    fields: dict[int, bytes] = dict(attrs(msg[4:]))
    kind = _KINDS.get(struct.unpack(">I", fields[A_TYPE])[0]) if len(fields.get(A_TYPE, b"")) == 4 else None
    if kind is None or A_ID not in fields:
        return None

    def ifname(attr: int) -> Optional[str]:
        raw = fields.get(attr)
        if raw is None or len(raw) != 4:
            return None
        idx = struct.unpack(">I", raw)[0]
        return ifnames.get(idx, f"if{idx}")

    handle = fields.get(A_RULE_HANDLE)
    if kind is EventKind.RULE and handle is None:
        # Falling off the last rule of a chain is reported as a "rule" event without a handle;
        # the policy/return event that follows says the same thing (nft monitor hides it too).
        return None
    verdict = _verdict(fields[A_VERDICT]) if A_VERDICT in fields else None
    if kind is EventKind.POLICY and A_POLICY in fields and len(fields[A_POLICY]) == 4:
        verdict = _VERDICTS.get(struct.unpack(">I", fields[A_POLICY])[0], verdict)
    packet = None
    ct_state = _ct_state(fields)
    ct_id = struct.unpack(">I", fields[A_CT_ID])[0] if len(fields.get(A_CT_ID, b"")) == 4 else None
    if A_NETWORK_HEADER in fields:
        packet = fields[A_NETWORK_HEADER] + fields.get(A_TRANSPORT_HEADER, b"")
    return TraceEvent(
        trace_id=struct.unpack(">I", fields[A_ID][:4])[0],
        kind=kind,
        family=family,
        table=_cstr(fields.get(A_TABLE, b"")),
        chain=_cstr(fields.get(A_CHAIN, b"")),
        handle=struct.unpack(">Q", handle)[0] if handle is not None and len(handle) == 8 else None,
        verdict=verdict,
        iif=ifname(A_IIF),
        oif=ifname(A_OIF),
        packet=packet,
        ct_state=ct_state,
        ct_id=ct_id,
    )


def without_policy_returns(events: list[TraceEvent]) -> list[TraceEvent]:
    """Drop the RETURN event some kernels send when a packet falls off the end of a base chain.

    Debian 12's 6.1 (measured in scripts/vm-test) reports the end of every chain as a RETURN
    event (verdict "continue", no rule handle) -- in a base chain too, where the POLICY event
    of the same chain follows and says what really happened. This machine's 6.18 sends the RETURN only
    when a regular chain hands back to its caller. The redundant event would be a step of its
    own ("end of chain, return to caller" in a chain that has no caller). A RETURN is redundant
    when the next event of the same trace id is the POLICY of the same chain.
    """
    out: list[TraceEvent] = []
    for i, ev in enumerate(events):
        if ev.kind is EventKind.RETURN and ev.source == "nftrace" and ev.handle is None:
            nxt = next((o for o in events[i + 1:] if o.trace_id == ev.trace_id and o.source == "nftrace"), None)
            if nxt is not None and nxt.kind is EventKind.POLICY and \
                    (nxt.family, nxt.table, nxt.chain) == (ev.family, ev.table, ev.chain):
                continue
        out.append(ev)
    return out


def _ct_state(fields: Mapping[int, bytes]) -> Optional[str]:
    """The conntrack state of the packet at this step. Before conntrack ran (priority below
    -200) the kernel reports INVALID too (no entry yet): tracer.correlate tells the two apart."""
    raw = fields.get(A_CT_STATE)
    if raw is None or len(raw) != 4:
        return None
    bits = struct.unpack(">I", raw)[0]
    return next((n for b, n in _CT_STATES if bits & b), None)


# ---------------------------------------------------------------------------------------------
# Ruleset generation: every committed nftables transaction increments it (NFT_MSG_GETGEN).

NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1


def getgen_request(seq: int) -> bytes:
    nfgen = struct.pack("=BBH", 0, 0, 0)  # AF_UNSPEC, NFNETLINK_V0, res_id
    return struct.pack("=IHHII", 16 + len(nfgen), NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, NLM_F_REQUEST, seq, 0) + nfgen


def parse_generation(data: bytes) -> Optional[int]:
    for mtype, body in messages(data):
        if mtype == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN) and len(body) >= 4:
            for t, v in attrs(body[4:]):
                if t == NFTA_GEN_ID and len(v) == 4:
                    return int(struct.unpack(">I", v)[0])
    return None

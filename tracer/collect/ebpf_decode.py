"""Decode the records the eBPF programs write and turn them into timeline events. Pure: bytes in.

Layout: `struct event_t` of probes/drops.c (little-endian, as the running machine; x86/arm64):
    u64 ts, skb, location; u32 kind, reason, ifindex; s32 stack, a, b; u8 role, family; u16 plen;
    u32 netns; u8 pkt[PKT_MAX]
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tracer.collect.ebpf_reasons import name as reason_name
from tracer.model import EventKind, TraceEvent

_HEAD = struct.Struct("<QQQIIIiiiBBHI")
HEAD_SIZE = _HEAD.size  # 56

DROP, RESET, ICMP, STATE, CONSUME = 1, 2, 3, 4, 5
PROBE, REPLY = 1, 2
# trace ids of eBPF events: above any nftrace id (32 bits), one per record
TRACE_ID_BASE = 1 << 40

# include/net/tcp_states.h (stable since 2.6: part of the /proc/net/tcp format)
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    ts_ns: int  # CLOCK_MONOTONIC
    skb: int
    location: int
    kind: int
    reason: int
    ifindex: int
    stack: int
    a: int
    b: int
    role: int
    family: int
    packet: bytes
    netns: int = 0  # inode of the device's network namespace, 0 when unknown


def decode(data: bytes) -> Record:
    if len(data) < HEAD_SIZE:
        raise DecodeError(f"eBPF record of {len(data)} bytes, shorter than its {HEAD_SIZE}-byte head")
    ts, skb, loc, kind, reason, ifindex, stack, a, b, role, family, plen, netns = _HEAD.unpack_from(data)
    if plen > len(data) - HEAD_SIZE:
        raise DecodeError(f"eBPF record claims {plen} packet bytes, has {len(data) - HEAD_SIZE}")
    return Record(ts, skb, loc, kind, reason, ifindex, stack, a, b, role, family, bytes(data[HEAD_SIZE:HEAD_SIZE + plen]),
                  netns)


def wanted(rec: Record, target_netns: int, symbol: Callable[[int], str],
           stack: Callable[[int], tuple[str, ...]] = lambda _: ()) -> bool:
    """Whether a record belongs in the timeline. Packet sockets (captures: fwtrace's own, tcpdump,
    scapy's sender) get copies of every packet, and what becomes of a copy is no fate of the
    probe: consumed, dropped when the socket's buffer is full (Linux 6.1: kfree_skb at packet_rcv,
    reason NOT_SPECIFIED), or purged unread when the capture closes (QUEUE_PURGE). Other consumed
    copies count only where the target namespace's stack took the packet: the sending namespace
    consumes its own copies."""
    if rec.kind not in (CONSUME, DROP):
        return True
    if capture_copy(rec, symbol, stack):
        return False
    return rec.kind == DROP or not (rec.netns and target_netns and rec.netns != target_netns)


# consume_skb / kfree_skb themselves and what they may be reached through: not the function that
# let the packet go
_FREEING = ("consume_skb", "__consume_stateless_skb", "kfree_skb", "__kfree_skb", "skb_release", "sk_skb_reason_drop")
# a packet socket's sending side: a drop below these is the sent probe's own (the receiving side,
# packet_rcv, tpacket_rcv, packet_recvmsg, packet_release..., only ever handles copies)
PACKET_SENDING = frozenset(("packet_sendmsg", "packet_sendmsg_spkt", "packet_snd", "tpacket_snd", "packet_xmit",
                            "packet_direct_xmit"))


def freed_by(rec: Record, symbol: Callable[[int], str], stack: Callable[[int], tuple[str, ...]]) -> str:
    """The function that dropped or consumed the packet: the tracepoint's `location`; where the
    kernel has none (skb:consume_skb before Linux 6.3, e.g. Debian 12's 6.1) or it names a freeing
    helper, the first caller outside the freeing helpers in the record's kernel stack."""
    where = symbol(rec.location) if rec.location else ""
    if where and not where.startswith(_FREEING):
        return where
    frames = stack(rec.stack) if rec.stack >= 0 else ()
    return next((f for f in frames if not f.startswith(_FREEING)), where or "?")


def capture_copy(rec: Record, symbol: Callable[[int], str], stack: Callable[[int], tuple[str, ...]]) -> bool:
    """Whether the record is a packet socket's copy: freed by, or on a stack through, its
    receiving side (a purge at close frees through skb_queue_purge_reason from packet_release)."""
    where = (symbol(rec.location),) if rec.location else ()  # freed_by picks from these too
    frames = where + (stack(rec.stack) if rec.stack >= 0 else ())
    return any(f.startswith(("packet_", "tpacket_")) and f.split(".")[0] not in PACKET_SENDING for f in frames)


def state_packet(rec: Record) -> bytes:
    """The socket of a STATE record as a bare IP + TCP header from its peer to it (no flags), so
    the same header matching ties it to the probe. Only for correlation; never sent."""
    p = rec.packet
    size = 4 if rec.family == 4 else 16
    local, peer = p[:size], p[16:16 + size]
    lport, pport = p[32:34], p[34:36]
    tcp = pport + lport + bytes(8) + b"\x50\x00" + bytes(6)
    if rec.family == 4:
        return bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + peer + local + tcp
    return bytes([0x60, 0, 0, 0, 0, 20, 6, 64]) + peer + local + tcp


@dataclass(frozen=True)
class Names:
    """What the system layer looked up, for the pure conversion."""

    reasons: dict[int, str]
    ifnames: dict[int, str]
    symbol: Callable[[int], str]  # kernel address -> "function" (or hex)
    stack: Callable[[int], tuple[str, ...]]  # stack id -> function names, innermost first


def to_event(rec: Record, names: Names, seq: int) -> TraceEvent:
    family = "ip" if rec.family == 4 else "ip6"
    iif = names.ifnames.get(rec.ifindex) if rec.ifindex else None
    frames = names.stack(rec.stack) if rec.stack >= 0 else ()
    common = dict(trace_id=TRACE_ID_BASE + seq, family=family, table="", chain="", source="ebpf", iif=iif)
    if rec.kind == DROP:
        where = names.symbol(rec.location) if rec.location else "?"
        reason = reason_name(names.reasons, rec.reason)
        hook = hook_of_stack(frames) if reason == "NETFILTER_DROP" else None
        return TraceEvent(kind=EventKind.DROP, packet=rec.packet, reason=reason, location=where, hook=hook,
                          text=f"kfree_skb reason {reason} at {where}", **common)  # type: ignore[arg-type]
    if rec.kind == CONSUME:
        where = freed_by(rec, names.symbol, names.stack)
        return TraceEvent(kind=EventKind.CONSUME, packet=rec.packet, location=where,
                          text=f"consumed (no drop reason) by {where}", **common)  # type: ignore[arg-type]
    if rec.kind == RESET:
        where = _first_of(frames, ("tcp_v4_send_reset", "tcp_v6_send_reset")) or "tcp_send_reset"
        caller = _caller(frames, where)
        return TraceEvent(kind=EventKind.SEND, packet=rec.packet, location=caller or where,
                          text="the TCP stack sends a RST" + (f" from {caller}" if caller else ""), **common)  # type: ignore[arg-type]
    if rec.kind == ICMP:
        caller = _caller(frames, "__icmp_send") or _caller(frames, "icmp6_send") or _first(frames)
        return TraceEvent(kind=EventKind.SEND, packet=rec.packet, location=caller,
                          text=f"the stack sends ICMP type {rec.a} code {rec.b}" + (f" from {caller}" if caller else ""),
                          **common)  # type: ignore[arg-type]
    if rec.kind == STATE:
        old, new = TCP_STATES.get(rec.a, str(rec.a)), TCP_STATES.get(rec.b, str(rec.b))
        return TraceEvent(kind=EventKind.STATE, packet=state_packet(rec),
                          text=f"socket {_sock(rec)} {old} -> {new}", **common)  # type: ignore[arg-type]
    raise DecodeError(f"unknown eBPF record kind {rec.kind}")


def _sock(rec: Record) -> str:
    size = 4 if rec.family == 4 else 16
    local = ipaddress.ip_address(rec.packet[:size])
    lport = int.from_bytes(rec.packet[32:34], "big")
    return f"[{local}]:{lport}" if rec.family == 6 else f"{local}:{lport}"


# Kernel functions that run one netfilter hook (or its caller, where the hook call is inlined),
# outermost wins when several are on the stack: the innermost match is the hook that ran.
_HOOK_FUNCS = (
    (("__netif_receive_skb_core", "nf_hook_ingress", "nf_ingress"), "ingress"),
    (("ip_rcv", "ipv6_rcv", "ip_rcv_core", "ip_list_rcv", "ipv6_list_rcv"), "prerouting"),
    (("ip_local_deliver", "ip6_input"), "input"),
    (("ip_forward", "ip6_forward"), "forward"),
    (("__ip_local_out", "__ip6_local_out", "ip_local_out", "ip6_local_out"), "output"),
    (("ip_output", "ip6_output", "ip_finish_output"), "postrouting"),
    (("__dev_queue_xmit", "nf_hook_egress"), "egress"),
)


def hook_of_stack(frames: tuple[str, ...]) -> Optional[str]:
    """The netfilter hook a NETFILTER_DROP happened in, from the kernel stack (innermost first):
    the first frame that is a hook's caller names it. None when no frame does."""
    for f in frames:
        base = f.split(".", 1)[0]  # clang/gcc suffixes: ip_rcv.cold, ip_local_deliver_finish.isra.0
        for funcs, hook in _HOOK_FUNCS:
            if base in funcs:
                return hook
    return None


def _first(frames: tuple[str, ...]) -> Optional[str]:
    return frames[0] if frames else None


def _first_of(frames: tuple[str, ...], wanted: tuple[str, ...]) -> Optional[str]:
    return next((f for f in frames if f in wanted), None)


def _caller(frames: tuple[str, ...], func: str) -> Optional[str]:
    """The frame that called `func` (one further out in an innermost-first stack)."""
    for i, f in enumerate(frames[:-1]):
        if f == func:
            return frames[i + 1]
    return None


# nf_hook_slow records (probes/nfhook.c struct hook_event_t): u64 ts, skb; u32 hook, pf; s32 verdict;
# u32 index; u8 pkt[PKT_MAX]
_HOOK = struct.Struct("<QQIIiI")
# UAPI constants (include/uapi/linux/netfilter.h): stable across kernels
NFPROTO = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
NETDEV_HOOKS = ("ingress", "egress")


def hook_event(data: bytes, seq: int) -> TraceEvent:
    """A netfilter hook's verdict for the probe: nf_hook_slow returned `verdict` (1: every hook
    function accepted; 0: stolen or queued; negative: dropped, -EPERM unless a rule set an errno)."""
    if len(data) < _HOOK.size:
        raise DecodeError(f"hook record of {len(data)} bytes")
    _ts, _skb, hook, pf, verdict, _index = _HOOK.unpack_from(data)
    names = NETDEV_HOOKS if pf == 5 else INET_HOOKS
    hook_name = names[hook] if hook < len(names) else str(hook)
    word = "accept" if verdict == 1 else "drop" if verdict < 0 else "stolen"
    return TraceEvent(trace_id=TRACE_ID_BASE + seq, kind=EventKind.HOOK, family=NFPROTO.get(pf, str(pf)), table="",
                      chain="", hook=hook_name, packet=bytes(data[_HOOK.size:]), source="ebpf",
                      text=f"netfilter {NFPROTO.get(pf, pf)} {hook_name} hook: nf_hook_slow returned {verdict} ({word})")


def replay_events(records: bytes, names: dict[str, Any], record_size: int) -> list[TraceEvent]:
    """The timeline events of an evidence bundle's `ebpf-records.bin` (records of `record_size`
    bytes, concatenated) with its `ebpf-names.json`: what the run itself decoded."""
    syms, stacks = names.get("symbols", {}), names.get("stacks", {})
    table = Names({int(k): v for k, v in names.get("reasons", {}).items()},
                  {int(k): v for k, v in names.get("ifnames", {}).items()},
                  lambda a: syms.get(str(a), hex(a)), lambda i: tuple(stacks.get(str(i), ())))
    recs = [decode(records[i:i + record_size]) for i in range(0, len(records) - record_size + 1, record_size)]
    kept = [r for r in recs if wanted(r, int(names.get("netns", 0)), table.symbol, table.stack)]
    return [to_event(r, table, i) for i, r in enumerate(kept)]

"""Parse what netfilter writes to the kernel log, and conntrack's table listing. No I/O.

Three kinds of kernel-log line matter to a probe (read from /dev/kmsg by `tracer.system.kmsg`):

* iptables-legacy TRACE (xt_TRACE + ip_tables' trace_packet, through nf_log):
  `TRACE: filter:INPUT:rule:1 IN=eth0 OUT= MAC=... SRC=192.0.2.2 DST=192.0.2.1 ... ID=64159 DF
  PROTO=TCP SPT=34068 DPT=8080 ...` -- table, chain, and `rule:N` (rule N matched), `return:N`
  (fell off a user chain) or `policy:N` (fell off a built-in chain; N is then rules + 1).
* LOG rules: `<prefix>IN=eth0 OUT= ...`; fwtrace's own carry the prefix `fwtrace:<runid>:<n> `.
* conntrack's nf_conntrack_log_invalid: `nf_ct_proto_6: invalid tcp flag combination IN=...`.

The packet fields (nf_log_syslog.c: `SRC= DST= ... ID=` for IPv4, `FLOWLBL=` for IPv6, then
`PROTO=TCP SPT= DPT=`, or `PROTO=ICMP TYPE= CODE= ID= SEQ=`) are what ties a line to a probe:
the probe's random IPv4 id / IPv6 flow label, addresses and ports -- never the time alone,
since anything else in any namespace may log at the same moment. Nothing here raises on odd
input: a line that is not understood gives None.
"""
from __future__ import annotations

import ipaddress
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Optional

from tracer.model import EventKind, IPAddress, Ruleset, TraceEvent
from tracer.ruleset.hooks import BUILTIN_HOOKS
from tracer.plan.kernplan import LogPoint, log_prefix  # noqa: F401  (the plan writes the prefixes this reads; re-exported)

# ---------------------------------------------------------------------------------------------
# /dev/kmsg records


@dataclass(frozen=True)
class KmsgRecord:
    """One record as read(2) from /dev/kmsg returns it (Documentation/ABI/testing/dev-kmsg)."""

    seq: int
    usec: int  # CLOCK_MONOTONIC microseconds
    text: str


def parse_record(raw: bytes) -> Optional[KmsgRecord]:
    """`6,1234,1125766368,-;TRACE: raw:PREROUTING:policy:2 IN=eth0 ...\\n SUBSYSTEM=...`"""
    head, sep, rest = raw.partition(b";")
    if not sep:
        return None
    parts = head.split(b",")
    if len(parts) < 3:
        return None
    try:
        seq, usec = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    text = rest.split(b"\n", 1)[0].decode("utf-8", "replace")
    return KmsgRecord(seq, usec, text)


# ---------------------------------------------------------------------------------------------
# nf_log lines

# nf_log_dump_packet_common always starts the packet with "IN=%s OUT=%s " right after the prefix.
_IN_OUT = re.compile(r"IN=(\S*) OUT=(\S*)(?: |$)")
# An ICMP error quotes the offending packet in brackets; TCP/IP options come in parentheses.
_BRACKETS = re.compile(r"\[[^\]]*\]?")
_PARENS = re.compile(r"\([^)]*\)?")


@dataclass(frozen=True)
class LogLine:
    """A netfilter kernel-log line: the prefix and the packet it describes."""

    prefix: str
    iif: Optional[str] = None
    oif: Optional[str] = None
    src: Optional[IPAddress] = None
    dst: Optional[IPAddress] = None
    proto: str = ""  # as printed: TCP, UDP, ICMP, ICMPv6, or a number
    sport: Optional[int] = None
    dport: Optional[int] = None
    ident: Optional[int] = None  # IPv4 ID / IPv6 FLOWLBL
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    icmp_id: Optional[int] = None
    flags: frozenset[str] = field(default_factory=frozenset)  # SYN ACK FIN RST PSH URG DF ...

    @property
    def version(self) -> int:
        return self.src.version if self.src is not None else 0

    @property
    def family(self) -> str:
        return "ip6" if self.version == 6 else "ip"


def _int(v: Optional[str], base: int = 10) -> Optional[int]:
    if v is None:
        return None
    try:
        return int(v, base)
    except ValueError:
        return None


def _addr(v: Optional[str]) -> Optional[IPAddress]:
    if not v:
        return None
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


def parse_line(text: str) -> Optional[LogLine]:
    """The prefix and packet fields of one nf_log line; None when it is not one."""
    m = _IN_OUT.search(text)
    if m is None:
        return None
    prefix = text[: m.start()]
    body = _PARENS.sub(" ", _BRACKETS.sub(" ", text[m.end():]))
    l3: dict[str, str] = {}
    l4: dict[str, str] = {}
    flags: set[str] = set()
    cur = l3
    for tok in body.split():
        key, eq, value = tok.partition("=")
        if not eq:
            flags.add(tok)
            continue
        if key == "PROTO":
            l3.setdefault("PROTO", value)
            cur = l4  # ICMP's echo ID= must not be taken for the IPv4 ID=
            continue
        cur.setdefault(key, value)
    proto = l3.get("PROTO", "")
    icmp = proto.upper().startswith("ICMP")
    ident = _int(l3.get("ID")) if "ID" in l3 else _int(l3.get("FLOWLBL"))
    return LogLine(
        prefix=prefix,
        iif=m.group(1) or None,
        oif=m.group(2) or None,
        src=_addr(l3.get("SRC")),
        dst=_addr(l3.get("DST")),
        proto=proto,
        sport=None if icmp else _int(l4.get("SPT")),
        dport=None if icmp else _int(l4.get("DPT")),
        ident=ident,
        icmp_type=_int(l4.get("TYPE")) if icmp else None,
        icmp_code=_int(l4.get("CODE")) if icmp else None,
        icmp_id=_int(l4.get("ID")) if icmp else None,
        flags=frozenset(flags),
    )


_TRACE = re.compile(r"^TRACE: (?P<table>\w+):(?P<chain>.+):(?P<type>rule|return|policy):(?P<num>\d+) ?$")
_CT_INVALID = re.compile(r"^nf_ct_proto_(?P<proto>\d+): ?(?P<msg>.*?) ?$")
_OWN_LOG = re.compile(r"^fwtrace:(?P<run>[0-9a-f]{8}):(?P<n>\d+) ?$")


@dataclass(frozen=True)
class TraceLine:
    table: str
    chain: str
    type: str  # "rule", "return", "policy"
    number: int


def trace_of(line: LogLine) -> Optional[TraceLine]:
    m = _TRACE.match(line.prefix)
    if m is None:
        return None
    return TraceLine(m.group("table"), m.group("chain"), m.group("type"), int(m.group("num")))


def ct_invalid_of(line: LogLine) -> Optional[tuple[int, str]]:
    """(IP protocol number, conntrack's reason) of an nf_conntrack_log_invalid line."""
    m = _CT_INVALID.match(line.prefix)
    return (int(m.group("proto")), m.group("msg")) if m else None


def own_log_prefix(prefix: str, run_id: str) -> Optional[int]:
    """The log point number in a prefix of one of this run's LOG/NFLOG rules, else None."""
    m = _OWN_LOG.match(prefix)
    return int(m.group("n")) if m and m.group("run") == run_id else None


def own_log_of(line: LogLine, run_id: str) -> Optional[int]:
    return own_log_prefix(line.prefix, run_id)


# ---------------------------------------------------------------------------------------------
# Lines -> trace events

_IPPROTO = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58}
_TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40, "CWR": 0x80}


def ipproto(line: LogLine) -> int:
    n = _IPPROTO.get(line.proto.upper())
    return n if n is not None else (_int(line.proto) or 0)


def packet_bytes(line: LogLine) -> Optional[bytes]:
    """The network + transport header the line describes, rebuilt as bytes.

    The other trace source (nftrace) hands over real header bytes, and correlation and
    diagnosis read both the same way (tracer.collect.nftrace.parse_headers). Only the fields the line
    shows are filled in; lengths and checksums are zero.
    """
    if line.src is None or line.dst is None or line.src.version != line.dst.version:
        return None
    proto = ipproto(line)
    ident = line.ident or 0
    if line.version == 4:
        l3 = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 0, ident & 0xFFFF, 0, 64, proto, 0,
                         line.src.packed, line.dst.packed)
    else:
        l3 = struct.pack(">IHBB16s16s", (6 << 28) | (ident & 0xFFFFF), 0, proto, 64, line.src.packed, line.dst.packed)
    if proto == 6:
        flags = sum(bit for name, bit in _TCP_FLAGS.items() if name in line.flags)
        l4 = struct.pack(">HHIIBBHHH", line.sport or 0, line.dport or 0, 0, 0, 0x50, flags, 0, 0, 0)
    elif proto == 17:
        l4 = struct.pack(">HHHH", line.sport or 0, line.dport or 0, 0, 0)
    elif proto in (1, 58):
        l4 = struct.pack(">BBHHH", line.icmp_type or 0, line.icmp_code or 0, 0, line.icmp_id or 0, 0)
    else:
        l4 = b""
    return l3 + l4


def packet_key(line: LogLine) -> int:
    """Groups the lines of one packet, as the nftrace id does: what NAT leaves alone (the
    source side, the protocol and the IP id / flow label). Kept apart from nftrace ids."""
    port = line.sport if line.sport is not None else line.icmp_id
    return packet_key_of(str(line.src), ipproto(line), port, line.ident)


def packet_key_of(src: str, proto: int, port: Optional[int], ident: Optional[int]) -> int:
    return (1 << 40) | zlib.crc32(f"{src}|{proto}|{port or 0}|{ident or 0}".encode())


@dataclass(frozen=True)
class KernContext:
    """What turning lines into events needs to know about the run (built by the probe)."""

    run_id: str
    ruleset: Ruleset  # the snapshot taken before instrumentation: its rule numbers are reported
    # rules fwtrace inserted at the top of legacy chains, which TRACE's numbers count:
    offsets: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    log_points: Mapping[int, LogPoint] = field(default_factory=dict)


def legacy_verdict(ruleset: Ruleset, family: str, t: TraceLine, number: int) -> Optional[str]:
    from tracer.ruleset.match import rule_action

    chain = ruleset.chain(family, t.table, t.chain, legacy=True)
    if t.type == "policy":
        return (chain.policy or "accept").lower() if chain is not None and chain.policy else None
    if t.type == "return":
        return "return"
    rule = ruleset.rule_by_number(family, t.table, t.chain, number, legacy=True)
    if rule is None:
        return None
    action = rule_action(rule)
    if action in ("drop", "reject"):
        return "drop"
    if action in ("dnat", "snat", "masquerade", "redirect"):
        return "accept"  # NAT targets end the chain with NF_ACCEPT
    if action == "other":
        return None
    return action  # accept, return, jump X, goto X, continue


def to_event(line: LogLine, ctx: KernContext, text: str = "") -> Optional[TraceEvent]:
    """A trace event for a TRACE, own-LOG or conntrack-invalid line; None for anything else."""
    if line.src is None:
        return None
    common = dict(trace_id=packet_key(line), family=line.family, iif=line.iif, oif=line.oif,
                  packet=packet_bytes(line), source="kmsg", text=text)
    t = trace_of(line)
    if t is not None:
        offset = ctx.offsets.get((line.family, t.table, t.chain), 0)
        number = t.number - offset
        if t.type == "rule" and number < 1:
            return None  # one of fwtrace's own TRACE/LOG rules
        kind = {"rule": EventKind.RULE, "return": EventKind.RETURN, "policy": EventKind.POLICY}[t.type]
        return TraceEvent(kind=kind, table=t.table, chain=t.chain, number=number, legacy=True,
                          verdict=legacy_verdict(ctx.ruleset, line.family, t, number),
                          hook=BUILTIN_HOOKS.get(t.chain), **common)  # type: ignore[arg-type]
    n = own_log_of(line, ctx.run_id)
    if n is not None:
        point = ctx.log_points.get(n)
        if point is None:
            return None
        return TraceEvent(kind=EventKind.LOG, table=point.table, chain=point.chain, legacy=point.legacy,
                          **common)  # type: ignore[arg-type]
    ct = ct_invalid_of(line)
    if ct is not None:
        return TraceEvent(kind=EventKind.CONNTRACK, table="conntrack", chain="", verdict="invalid",
                          **{**common, "text": ct[1]})  # type: ignore[arg-type]
    return None


def event_of_record(raw: bytes, ctx: KernContext) -> Optional[TraceEvent]:
    """The trace event of one /dev/kmsg record, or None when it is not about fwtrace's probes."""
    record = parse_record(raw)
    if record is None:
        return None
    line = parse_line(record.text)
    return to_event(line, ctx, record.text) if line is not None else None

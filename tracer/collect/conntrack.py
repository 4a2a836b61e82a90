"""`conntrack -L` output parsed into entries: the probe flow's state after the run. Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tracer.model import IPAddress
from tracer.collect.kernlog import _addr, _int


@dataclass(frozen=True)
class Tuple:
    src: IPAddress
    dst: IPAddress
    sport: Optional[int]
    dport: Optional[int]


@dataclass(frozen=True)
class CtEntry:
    """One line of `conntrack -L`:
    `tcp      6 118 SYN_RECV src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=8080 src=192.0.2.1
    dst=192.0.2.2 sport=8080 dport=40000 mark=0 use=1`"""

    proto: str
    state: Optional[str]  # TCP state; None for udp/icmp
    orig: Tuple
    reply: Tuple
    flags: frozenset[str] = frozenset()  # UNREPLIED, ASSURED

    @property
    def nat(self) -> Optional[str]:
        """How NAT rewrote the flow, from the reply tuple, or None."""
        out = []
        if self.reply.src != self.orig.dst or self.reply.sport != self.orig.dport:
            port = f":{self.reply.sport}" if self.reply.sport is not None else ""
            out.append(f"DNAT to {self.reply.src}{port}")
        if self.reply.dst != self.orig.src or self.reply.dport != self.orig.sport:
            port = f":{self.reply.dport}" if self.reply.dport is not None else ""
            out.append(f"SNAT to {self.reply.dst}{port}")
        return ", ".join(out) or None

    def describe(self) -> str:
        o = self.orig
        s = f"{self.proto} {self.state + ' ' if self.state else ''}{o.src}:{o.sport} > {o.dst}:{o.dport}"
        if self.flags:
            s += " [" + ",".join(sorted(self.flags)) + "]"
        return s + (f" ({self.nat})" if self.nat else "")


def _tuple(d: dict[str, str]) -> Optional[Tuple]:
    src, dst = _addr(d.get("src")), _addr(d.get("dst"))
    if src is None or dst is None:
        return None
    ident = _int(d.get("id"))
    return Tuple(src, dst, _int(d.get("sport")) if "sport" in d else ident,
                 _int(d.get("dport")) if "dport" in d else ident)


def parse_conntrack(text: str) -> list[CtEntry]:
    """Entries of `conntrack -L` output (the summary line goes to stderr)."""
    out = []
    for raw in text.splitlines():
        words = raw.split()
        if len(words) < 4:
            continue
        tuples: list[dict[str, str]] = [{}]
        flags: set[str] = set()
        state = None
        for w in words[3:]:
            key, eq, value = w.partition("=")
            if eq:
                if key in tuples[-1]:
                    if len(tuples) == 2:
                        break  # mark=, use=, zone=... come after both tuples
                    tuples.append({})
                if key in ("src", "dst", "sport", "dport", "type", "code", "id"):
                    tuples[-1][key] = value
            elif w.startswith("[") and w.endswith("]"):
                flags.add(w[1:-1])
            elif w.isupper() and state is None and not tuples[0]:
                state = w
        if len(tuples) != 2:
            continue
        orig, reply = _tuple(tuples[0]), _tuple(tuples[1])
        if orig is None or reply is None:
            continue
        out.append(CtEntry(words[0], state, orig, reply, frozenset(flags)))
    return out

"""When `--ebpf auto` loads the programs: only when the first pass leaves a packet's fate
unexplained. Pure."""
from __future__ import annotations

from typing import Iterable, Optional

from tracer.model import PacketResult, Proto, Verdict

MODES = ("auto", "on", "off")


def unexplained(results: Iterable[PacketResult]) -> Optional[str]:
    """Why a second pass with eBPF is worth it, or None when every packet's fate is explained.

    Unexplained: no netfilter verdict (the packet vanished without a drop in any traced chain:
    dropped before, between or after the hooks); accepted but no answer to a TCP probe (TCP always
    answers a SYN: with SYN-ACK or RST, unless something drops it); rejected, yet no reply came.
    An ordinary DROP or REJECT by a rule is explained by the rule."""
    for r in results:
        if r.verdict is Verdict.UNKNOWN:
            return f"{r.spec.summary()}: no netfilter verdict"
        if r.verdict is Verdict.ACCEPT and r.reply.none and r.spec.proto is Proto.TCP and "S" in r.spec.flags \
                and "A" not in r.spec.flags:
            return f"{r.spec.summary()}: accepted, but no reply came"
        if r.verdict is Verdict.REJECT and r.reply.none:
            return f"{r.spec.summary()}: rejected, but no reply came"
    return None

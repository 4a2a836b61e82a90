"""Put eBPF events into a packet's timeline. Pure.

The eBPF events of an exchange are kept apart from the netfilter sources' while those are
correlated (they carry no table or chain), then join the packet: the probe's own events after
its netfilter steps, the events of its replies after the reply's steps. That is their time
order: a drop is the last thing that happens to a packet, and the stack's own RST / ICMP error
and socket changes come after INPUT. A REJECT rule's reply is the exception: it is sent while the
rule's expressions run, and nftrace reports the rule after them, so it goes before the rule's
step (the first drop verdict).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from tracer.correlate import is_probe, is_reply
from tracer.model import EventKind, PacketResult, Step, TraceEvent
from tracer.packet import parse_headers

SOURCE = "ebpf"


def split(events: Iterable[TraceEvent]) -> tuple[list[TraceEvent], list[TraceEvent]]:
    """(the netfilter sources' events, the eBPF events), each in arrival order."""
    nf: list[TraceEvent] = []
    bpf: list[TraceEvent] = []
    for e in events:
        (bpf if e.source == SOURCE else nf).append(e)
    return nf, bpf


def attach(result: PacketResult, events: list[TraceEvent], own_ifaces: frozenset[str] = frozenset()) -> PacketResult:
    """`result` with the eBPF events that concern its probe or its replies appended.

    `own_ifaces`: fwtrace's own injection port (simulated ingress). A reply caught on its way out
    is redirected into that port and freed there (OTHERHOST: not addressed to the port): the
    end of fwtrace's capture, not of the reply's trip."""
    spec = result.spec
    probe: list[Step] = []
    reply: list[Step] = []
    for e in events:
        h = parse_headers(e.packet) if e.packet else None
        if h is None or (e.iif is not None and e.iif in own_ifaces):
            continue
        if is_probe(h, spec):
            probe.append(Step(e))
        elif is_reply(h, spec) and not (e.kind is EventKind.DROP and e.reason == "NO_SOCKET"):
            # (a probe goes out of a raw socket, so its reply meets no socket where it arrives:
            # that drop ends every reply's trip and says nothing)
            reply.append(Step(e))
    if not probe and not reply:
        return result
    return dataclasses.replace(result, steps=_in_order(result.steps, probe), reply_steps=result.reply_steps + tuple(reply))


def _in_order(steps: tuple[Step, ...], kernel: list[Step]) -> tuple[Step, ...]:
    """The netfilter steps with the kernel's after them, a REJECT's own reply before its rule."""
    during = [s for s in kernel if s.event.kind is EventKind.SEND and "reject" in (s.event.location or "")]
    rule = next((i for i, s in enumerate(steps) if (s.event.verdict or "").startswith("drop")), None)
    if not during or rule is None:
        return steps + tuple(kernel)
    rest = tuple(s for s in kernel if s not in during)
    return steps[:rule] + tuple(during) + steps[rule:] + rest


def kernel_steps(result: PacketResult) -> list[TraceEvent]:
    """The probe's eBPF events, in order."""
    return [s.event for s in result.steps if s.event.source == SOURCE]

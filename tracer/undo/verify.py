"""Carry out the cleanup proof of one run (tracer/undo/proof.py decides; this lists and reads).

`before()` is called in the target namespace before fwtrace's first nft change, `after()` once
every undo ran. The listings come from `snapshot.proof_state`; the sysctls from the journal,
whose undo records hold the value each had before the run set it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from tracer import snapshot, system
from tracer.undo import proof
from tracer.undo.journal import Undo

ChainKey = tuple[str, str, str]


@dataclass
class ContentProof:
    table: str  # the run's own table, fwtrace_<runid>
    netns: Optional[str]  # the target namespace (for the remedies' commands)
    scope: Optional[proof.Scope] = None
    state: dict[str, str] = field(default_factory=dict)
    state_after: dict[str, str] = field(default_factory=dict)

    @property
    def legacy_seen(self) -> bool:
        """Were there x_tables tables before or after the run?"""
        return any(k.startswith("x_tables ") for k in (*self.state, *self.state_after))

    def before(self, log_family: Optional[str], legacy_saved: dict[str, str]) -> frozenset[ChainKey]:
        """List what the run may touch; returns the nf_tables chains of the tables listed in
        full (where --log may put a rule without creating a chain)."""
        tables: tuple[tuple[str, str], ...] = ()
        if log_family is not None:
            names = [k.split()[1:3] for k in snapshot.nft_tables()]
            tables = tuple(sorted((f, n) for f, n in names if f == log_family and n in snapshot.XTABLES_NAMES))
        self.scope = proof.Scope(self.table, tables)
        self.state = snapshot.proof_state(self.scope, legacy_saved)
        return frozenset(tuple(k.split()[1:4]) for k in self.state if k.startswith("chain "))  # type: ignore[misc]

    def after(self, undos: Iterable[Undo], extra: Iterable[str] = ()) -> tuple[proof.Leftover, ...]:
        """What differs now; `undos`: every change the run journaled; `extra`: what other layers
        found left (the injection port's links and tc state)."""
        port = [proof.Leftover(e, "left behind", self._port_remedy(e)) for e in extra]
        if self.scope is None:
            return tuple(port)
        now = snapshot.proof_state(self.scope)
        self.state_after = now
        undos = list(undos)
        before = {**self.state, **proof.sysctl_objects(_sysctls(undos, after=False))}
        now.update(proof.sysctl_objects(_sysctls(undos, after=True)))
        found = list(proof.differences(before, now, self.netns))
        found += [proof.Leftover(name, "shared switch still registered to this run", f"`fwtrace cleanup{self._ns_arg()}`")
                  for name in _shared_left(undos)]
        return tuple(found + port)

    def _port_remedy(self, text: str) -> str:
        pre = f"ip netns exec {self.netns} " if self.netns else ""
        if text.startswith("injection port "):
            return f"`{pre}ip link del {text.split()[2]}`"
        return (f"compare `{pre}tc qdisc show` and `{pre}tc filter show dev DEV egress` with the state before "
                "the run; delete the cls_bpf filters fwtrace added (and its clsact qdisc where it made one)")

    def _ns_arg(self) -> str:
        return f" --netns {self.netns}" if self.netns else ""


def _sysctls(undos: list[Undo], after: bool) -> list[tuple[Optional[str], str, Optional[str]]]:
    """(netns, key, value) of each sysctl the run set: the value before the run, or now."""
    out = []
    for u in undos:
        if u.kind != "sysctl":
            continue
        if not after:
            out.append((u.netns, u.key, u.value))
            continue
        try:
            with system.netns(u.netns):
                out.append((u.netns, u.key, system.sysctl_get(u.key)))
        except Exception:  # the namespace is gone, and the sysctl with it
            out.append((u.netns, u.key, u.value))
    return out


def _shared_left(undos: list[Undo]) -> list[str]:
    """Global switches (tracer/undo/shared.py) this run still holds: the last live run restores
    them, so only the run's own registration is checked here."""
    from tracer.undo import shared

    return [f"global sysctl {u.key}" for u in undos if u.kind == "shared"
            and os.path.exists(os.path.join(shared.SHARED_DIR, u.key + ".users", u.value))]


def leftover_texts(found: Iterable[proof.Leftover]) -> tuple[str, ...]:
    return tuple(f.text() for f in found)


def undos_of(journal: Any) -> list[Undo]:
    """Every undo the run journaled, done or not (the journal file may be gone: its content stays)."""
    if journal is None:
        return []
    return [Undo.from_json(e["undo"]) for e in journal.doc.entries]

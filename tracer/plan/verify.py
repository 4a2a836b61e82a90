"""The cleanup proof of one run, as pipeline steps (pure; tracer/plan/proof.py compares).

`before()` runs in the target before fwtrace's first nft change, `after()` once every undo ran.
The listings come from the driver (`ProofListing`, `NftTables`); the sysctls from the undo
records the run journaled, which hold the value each had before the run set it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tracer.plan.commands import Finished, NftTables, ProofListing, ReadSysctl, SharedHeld, Steps
from tracer.ruleset.snapshot import XTABLES_NAMES
from tracer.plan import proof
from tracer.plan.records import ReleaseShared, RestoreSysctl

ChainKey = tuple[str, str, str]


@dataclass(frozen=True)
class Start:
    """What the run may touch, as listed before its first nft change."""

    scope: proof.Scope
    state: dict[str, str] = field(default_factory=dict)

    @property
    def nft_chains(self) -> frozenset[ChainKey]:
        """The chains of the tables listed in full: where --log may put a rule without making one."""
        return frozenset((k.split()[1], k.split()[2], k.split()[3]) for k in self.state if k.startswith("chain "))


@dataclass(frozen=True)
class Verdict:
    """The proof's answer: what differs, and whether x_tables tables were there to compare."""

    found: tuple[proof.Leftover, ...]
    legacy_seen: bool
    checked: tuple[str, ...] = ()  # what was compared, for the report (it claims no more)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(f.text() for f in self.found)

    @property
    def legacy_unchanged(self) -> Optional[bool]:
        return not any(f.name.startswith("x_tables ") for f in self.found) if self.legacy_seen else None


def before(table: str, log_family: Optional[str], legacy_saved: dict[str, str],
           extra: tuple[tuple[str, str], ...] = ()) -> Steps[Start]:
    """List the scope: the table list, x_tables, and with --log the iptables-nft tables of the
    probe's family in full (where its rules go); `extra`: the nf_tables tables --prove-fix puts its
    narrowed rules into, also in full."""
    tables: tuple[tuple[str, str], ...] = ()
    if log_family is not None:
        names = [k.split()[1:3] for k in (yield NftTables())]
        tables = tuple(sorted((f, n) for f, n in names if f == log_family and n in XTABLES_NAMES))
    scope = proof.Scope(table, tuple(sorted(set(tables) | set(extra))))
    return Start(scope, dict((yield ProofListing(scope, legacy_saved))))


def after(start: Optional[Start], finished: Finished, netns: Optional[str]) -> Steps[Verdict]:
    """Compare; `netns` names the target in the remedies' commands."""
    port = tuple(proof.Leftover(e, "left behind", _port_remedy(e, netns)) for e in finished.port_left)
    if start is None:  # the run failed before its first nft change
        return Verdict(port, False, ("the injection port",) if port else ())
    now = dict((yield ProofListing(start.scope)))
    sysctls = [u for u in finished.undos if isinstance(u, RestoreSysctl)]
    then = {**start.state, **proof.sysctl_objects((u.netns, u.key, u.old) for u in sysctls)}
    values = []
    for s in sysctls:
        values.append((s.netns, s.key, (yield ReadSysctl(s.key))))
    now.update(proof.sysctl_objects(values))
    found = list(proof.differences(then, now, netns))
    for r in finished.undos:
        if isinstance(r, ReleaseShared) and (yield SharedHeld(r.key, r.run_id)):
            found.append(proof.Leftover(f"global sysctl {r.key}", "still registered to this run",
                                        f"`fwtrace cleanup{f' --netns {netns}' if netns else ''}`"))
    seen = any(k.startswith("x_tables ") for k in (*start.state, *now))
    return Verdict(tuple(found) + port, seen, _checked(start.scope, seen, len(sysctls)))


def _checked(scope: proof.Scope, legacy_seen: bool, sysctls: int) -> tuple[str, ...]:
    out = ["the table list (handles, flags, chain and set counts)"]
    if scope.tables:
        out.append(f"{', '.join(f'{f} {t}' for f, t in scope.tables)} in full (chains, sets, rules with handles)")
    if legacy_seen:
        out.append("the iptables-legacy tables")
    if sysctls:
        out.append(f"{sysctls} sysctl{'s' if sysctls > 1 else ''}")
    return tuple(out)


def _port_remedy(text: str, netns: Optional[str]) -> str:
    pre = f"ip netns exec {netns} " if netns else ""
    if text.startswith("injection port "):
        return f"`{pre}ip link del {text.split()[2]}`"
    return (f"compare `{pre}tc qdisc show` and `{pre}tc filter show dev DEV egress` with the state before "
            "the run; delete the cls_bpf filters fwtrace added (and its clsact qdisc where it made one)")

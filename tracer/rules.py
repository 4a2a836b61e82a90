"""Frozen values of a ruleset as the kernel holds it: backends, rules, chains, tables (tracer.model
re-exports them; part of the model, in a module of their own to keep each short). No I/O."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator, Optional


class Backend(str, enum.Enum):
    NFT = "nftables"  # native nft tables
    IPTABLES_NFT = "iptables-nft"  # x_tables syntax on top of nf_tables
    IPTABLES_LEGACY = "iptables-legacy"  # x_tables proper (issue: kernel-log evidence)


# ---------------------------------------------------------------------------------------------
# Rulesets


@dataclass(frozen=True)
class Rule:
    """One rule as the kernel holds it.

    `number` is the 1-based position in its chain (what `iptables -L --line-numbers` shows);
    `text` is the rule as `nft -a list ruleset` prints it, without counters and handle comment;
    `ipt` is the rule as `iptables -S` prints it when the table is managed by iptables.
    """

    family: str
    table: str
    chain: str
    number: int
    handle: Optional[int]
    text: str
    ipt: Optional[str] = None

    @property
    def display(self) -> str:
        return self.ipt if self.ipt is not None else self.text


@dataclass(frozen=True)
class Chain:
    family: str
    table: str
    name: str
    hook: Optional[str] = None  # None for a regular (user-defined) chain
    priority: Optional[str] = None  # as nft prints it: "filter", "-350", "dstnat"
    policy: Optional[str] = None  # "accept" / "drop" for base chains
    rules: tuple[Rule, ...] = ()

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(frozen=True)
class Table:
    family: str
    name: str
    chains: tuple[Chain, ...] = ()
    backend: Backend = Backend.NFT

    def chain(self, name: str) -> Optional[Chain]:
        for c in self.chains:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class Ruleset:
    tables: tuple[Table, ...] = ()

    # iptables-legacy tables live beside nf_tables tables of the same family and name on mixed
    # hosts (x_tables "filter" and iptables-nft's "ip filter" both hook INPUT): every lookup
    # says which world it means, and nf_tables is the default.
    def table(self, family: str, name: str, legacy: bool = False) -> Optional[Table]:
        for t in self.tables:
            if t.family == family and t.name == name and (t.backend is Backend.IPTABLES_LEGACY) == legacy:
                return t
        return None

    def chain(self, family: str, table: str, name: str, legacy: bool = False) -> Optional[Chain]:
        t = self.table(family, table, legacy)
        return t.chain(name) if t else None

    def rule_by_handle(self, family: str, table: str, chain: str, handle: int) -> Optional[Rule]:
        c = self.chain(family, table, chain)
        if c is None:
            return None
        for r in c.rules:
            if r.handle == handle:
                return r
        return None

    def rule_by_number(self, family: str, table: str, chain: str, number: int, legacy: bool = False) -> Optional[Rule]:
        c = self.chain(family, table, chain, legacy)
        if c is None or not 1 <= number <= len(c.rules):
            return None
        return c.rules[number - 1]

    @property
    def has_legacy(self) -> bool:
        return any(t.backend is Backend.IPTABLES_LEGACY for t in self.tables)

    @property
    def has_nft(self) -> bool:
        return any(t.backend is not Backend.IPTABLES_LEGACY and any(c.rules or c.is_base for c in t.chains)
                   for t in self.tables)

    def rules(self) -> Iterator[Rule]:
        for t in self.tables:
            for c in t.chains:
                yield from c.rules

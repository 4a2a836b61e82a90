"""The firewall as one model, assembled from the tools' listings (pure; tracer/system/listing.py runs them):
nft rules plus iptables-nft's own view, and iptables-legacy (x_tables) tables when there are any.

Two ways to list: `take()` lists everything (for evidence bundles and tests); `chains()` lists only the
chains a probe met, one `nft -a list chain` and one `iptables -S CHAIN` each. On a 50k-rule
kube-proxy host the full listing costs ~2 s and iptables-nft-save ~5 s; a chain costs ~5 ms.
A chain of more than 1000 rules is read sparsely instead (tracer/system/sparse.py): every rule's number,
the text of only the rules the report shows (a 20,000-rule chain: ~0.3 s instead of 1.5 s or more).
x_tables has no per-chain listing worth having and no generation counter: `legacy()` saves the
legacy tables of the families that have any (/proc/net/ip*_tables_names, free to read), so a
host without them runs no legacy tool at all.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from tracer.model import Backend, Chain, Rule, Ruleset, Table
from tracer.ruleset import (
    LEGACY_SAVE,  # noqa: F401  re-exported (evidence bundles name their files by it)
    IptTable,
    attach_iptables,
    managed_tables,
    parse_iptables_save,
    parse_nft_ruleset,
)
from tracer.ruleset.hooks import BUILTIN_HOOKS, legacy_priority

XTABLES_NAMES = frozenset({"filter", "nat", "mangle", "raw", "security"})
IPT_SAVE = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
IPT = {"ip": "iptables-nft", "ip6": "ip6tables-nft"}

ChainKey = tuple[str, str, str]  # (family, table, chain)


@dataclass(frozen=True)
class Snapshot:
    ruleset: Ruleset
    nft_text: str  # what nft printed (the whole ruleset, or the listed chains one after another)
    ipt_text: dict[str, str]  # "ip"/"ip6" -> iptables-save style text for those tables
    legacy_text: dict[str, str] = field(default_factory=dict)  # "ip"/"ip6" -> iptables-legacy-save output
    # Chains holding only the rules a report shows (tracer/system/sparse.py): their other rules are not read
    sparse: frozenset[ChainKey] = frozenset()

    @property
    def legacy_listing(self) -> str:
        return legacy_listing(self.ruleset)


def families_to_save(ruleset: Ruleset) -> list[str]:
    """nft flags a table as iptables-nft's only when it holds xt expressions, so every ip/ip6
    table with an x_tables name is asked about (attach_iptables keeps the text only where the
    rule counts agree): one command per family, none without such a table."""
    return [f for f in IPT_SAVE if any(t.family == f and t.name in XTABLES_NAMES for t in ruleset.tables)]


def merge_tables(ruleset: Ruleset) -> Ruleset:
    """One Table per (family, name): chain listings come one table block each."""
    merged: dict[tuple[str, str], Table] = {}
    for t in ruleset.tables:
        key = (t.family, t.name)
        old = merged.get(key)
        if old is None:
            merged[key] = t
        else:
            backend = t.backend if old.backend is Backend.NFT else old.backend
            merged[key] = dataclasses.replace(old, chains=old.chains + t.chains, backend=backend)
    return Ruleset(tuple(merged.values()))


def with_iptables(ruleset: Ruleset, ipt: dict[str, str]) -> Ruleset:
    for family, text in ipt.items():
        ruleset = attach_iptables(ruleset, family, parse_iptables_save(text))
    return ruleset


def with_legacy(ruleset: Ruleset, legacy: dict[str, str]) -> Ruleset:
    """Add the iptables-legacy tables (pure); they keep their own backend beside nft's."""
    if not legacy:
        return ruleset
    extra = tuple(t for family, text in legacy.items() for t in legacy_tables(family, parse_iptables_save(text)))
    return Ruleset(ruleset.tables + extra)


def legacy_tables(family: str, saved: dict[str, IptTable]) -> tuple[Table, ...]:
    """The tables of `iptables-legacy-save` output as model tables (backend IPTABLES_LEGACY).

    A table is kept only when it holds something: a rule, a user chain or a policy other than
    ACCEPT (x_tables instantiates empty tables on any listing, and fwtrace's own TRACE rules
    leave an empty raw table behind that cannot be unregistered).
    """
    tables = []
    for name, t in saved.items():
        chains = []
        for c in t.chains:
            hook = BUILTIN_HOOKS.get(c.name) if c.policy is not None else None
            prio = legacy_priority(name, c.name)
            rules = tuple(Rule(family, name, c.name, i, None, line, line) for i, line in enumerate(c.rules, 1))
            chains.append(Chain(family, name, c.name, hook, str(prio) if hook and prio is not None else None,
                                c.policy.lower() if c.policy else None, rules))
        if any(c.rules or not c.is_base or c.policy != "accept" for c in chains):
            tables.append(Table(family, name, tuple(chains), Backend.IPTABLES_LEGACY))
    return tuple(tables)


def legacy_listing(ruleset: Ruleset) -> str:
    """The legacy tables as iptables-save would print them without counters (compared before/after)."""
    out = []
    for t in ruleset.tables:
        if t.backend is not Backend.IPTABLES_LEGACY:
            continue
        out.append(f"*{t.family} {t.name}")
        out.extend(f":{c.name} {(c.policy or '-').upper()}" for c in t.chains)
        out.extend(r.text for c in t.chains for r in c.rules)
    return "\n".join(out) + ("\n" if out else "")


def assemble(nft_stdout: str, nft_stderr: str, ipt: dict[str, str], legacy: dict[str, str] | None = None) -> Ruleset:
    """The model from the tools' outputs (pure: also used to replay a saved evidence bundle)."""
    nft = merge_tables(parse_nft_ruleset(nft_stdout, managed_tables(nft_stderr)))
    return with_legacy(with_iptables(nft, ipt), legacy or {})


def save_text(chains: dict[str, dict[str, list[str]]]) -> str:
    """iptables-save style text from `iptables -S CHAIN` outputs: table -> chain -> lines (pure)."""
    out = []
    for table, by_chain in chains.items():
        out.append(f"*{table}")
        out.extend(f":{chain} - [0:0]" for chain in by_chain)
        for lines in by_chain.values():
            out.extend(line for line in lines if line.startswith("-A "))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def filter_tables(chains_text: str) -> list[tuple[str, str]]:
    """(family, name) of the ip/ip6/inet tables with a base chain on the input or forward hook,
    from `nft list chains` (pure). That listing has no rules: on a 50k-rule host it takes ~0.3 s
    where `nft list tables` takes seconds (nft 1.0.6 fetches every rule for it)."""
    found: list[tuple[str, str]] = []
    table: Optional[tuple[str, str]] = None
    for line in chains_text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "table":
            table = (words[1], words[2])
        elif table is not None and table[0] in ("ip", "ip6", "inet") and table not in found and \
                re.search(r"\bhook (input|forward)\b", line):
            found.append(table)
    return found

"""Read the firewall of the calling thread's namespace: nft rules plus iptables-nft's own view.

Two ways: `take()` lists everything (for evidence bundles and tests); `chains()` lists only the
chains a probe met, one `nft -a list chain` and one `iptables -S CHAIN` each. On a 50k-rule
kube-proxy host the full listing costs ~2 s and iptables-nft-save ~5 s; a chain costs ~5 ms.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from .errors import CommandError
from .model import Backend, Ruleset, Table
from .ruleset import attach_iptables, managed_tables, parse_iptables_save, parse_nft_ruleset
from .system import run

XTABLES_NAMES = frozenset({"filter", "nat", "mangle", "raw", "security"})
IPT_SAVE = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
IPT = {"ip": "iptables-nft", "ip6": "ip6tables-nft"}

ChainKey = tuple[str, str, str]  # (family, table, chain)


@dataclass(frozen=True)
class Snapshot:
    ruleset: Ruleset
    nft_text: str  # what nft printed (the whole ruleset, or the listed chains one after another)
    ipt_text: dict[str, str]  # "ip"/"ip6" -> iptables-save style text for those tables


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


def assemble(nft_stdout: str, nft_stderr: str, ipt: dict[str, str]) -> Ruleset:
    """The model from the tools' outputs (pure: also used to replay a saved evidence bundle)."""
    return with_iptables(merge_tables(parse_nft_ruleset(nft_stdout, managed_tables(nft_stderr))), ipt)


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


def take() -> Snapshot:
    listed = run(["nft", "-a", "list", "ruleset"])
    ruleset = parse_nft_ruleset(listed.stdout, managed_tables(listed.stderr))
    # iptables-save exits 3 after a rule it cannot print: what it printed is still right.
    ipt = {f: run([IPT_SAVE[f]], check=False).stdout for f in families_to_save(ruleset)}
    return Snapshot(with_iptables(ruleset, ipt), listed.stdout, ipt)


def chains(keys: Iterable[ChainKey]) -> Snapshot:
    """Only the given chains (a chain deleted meanwhile is skipped; any other failure to read
    one is an error: explaining a verdict with rules we could not read would be guesswork)."""
    texts, errs = [], []
    ipt: dict[str, dict[str, dict[str, list[str]]]] = {}
    for family, table, chain in sorted(set(keys)):
        listed = run(["nft", "-a", "list", "chain", family, table, chain], check=False)
        if listed.returncode != 0:
            if "No such file or directory" in listed.stderr:
                continue
            raise CommandError(list(listed.argv), listed.returncode, listed.stderr,
                               "the ruleset cannot be read by this nft; is it older than the tool that wrote the rules?")
        texts.append(listed.stdout)
        errs.append(listed.stderr)
        if family in IPT and table in XTABLES_NAMES:
            spec = run([IPT[family], "-t", table, "-S", chain], check=False)
            if spec.returncode == 0:
                ipt.setdefault(family, {}).setdefault(table, {})[chain] = spec.stdout.splitlines()
    text = "".join(texts)
    ipt_text = {family: save_text(tables) for family, tables in ipt.items()}
    return Snapshot(assemble(text, "".join(errs), ipt_text), text, ipt_text)

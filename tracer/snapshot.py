"""Read the firewall of the calling thread's namespace: nft rules plus iptables-nft's own view,
and iptables-legacy (x_tables) tables when the namespace has any.

Two ways: `take()` lists everything (for evidence bundles and tests); `chains()` lists only the
chains a probe met, one `nft -a list chain` and one `iptables -S CHAIN` each. On a 50k-rule
kube-proxy host the full listing costs ~2 s and iptables-nft-save ~5 s; a chain costs ~5 ms.
x_tables has no per-chain listing worth having and no generation counter: `legacy()` saves the
legacy tables of the families that have any (/proc/net/ip*_tables_names, free to read), so a
host without them runs no legacy tool at all.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from tracer.errors import CommandError
from tracer.model import Backend, Ruleset, Table
from tracer.ruleset import (
    LEGACY_NAMES,
    LEGACY_SAVE,
    attach_iptables,
    managed_tables,
    parse_iptables_save,
    parse_nft_ruleset,
)
from tracer.system import proc_net, run

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
    from tracer.trace.kernplan import (
        legacy_tables,  # the nft-only path never loads the kernel-log modules
    )

    extra = tuple(t for family, text in legacy.items() for t in legacy_tables(family, parse_iptables_save(text)))
    return Ruleset(ruleset.tables + extra)


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


def legacy_families() -> list[str]:
    """Families with x_tables tables in this namespace: reading /proc costs nothing, so the
    nft-only path runs no legacy tool at all."""
    return [f for f, name in LEGACY_NAMES.items() if proc_net(name).strip()]


def legacy() -> dict[str, str]:
    """iptables-legacy-save output of each family that has x_tables tables."""
    return {f: run([LEGACY_SAVE[f]], check=False).stdout for f in legacy_families()}


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
    legacy_saved = legacy()
    return Snapshot(with_legacy(with_iptables(merge_tables(ruleset), ipt), legacy_saved), listed.stdout, ipt, legacy_saved)


def chains(keys: Iterable[ChainKey], legacy_saved: Optional[dict[str, str]] = None) -> Snapshot:
    """Only the given chains (a chain deleted meanwhile is skipped; any other failure to read
    one is an error: explaining a verdict with rules we could not read would be guesswork).
    `legacy_saved`: the iptables-legacy-save outputs read before the run, added as they are."""
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
    legacy_saved = legacy_saved or {}
    return Snapshot(assemble(text, "".join(errs), ipt_text, legacy_saved), text, ipt_text, legacy_saved)


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


def hooked_tables() -> list[tuple[str, str]]:
    """The ip/ip6/inet tables with a base chain on input or forward, from one NFT_MSG_GETCHAIN
    dump over netlink in the calling thread's namespace (milliseconds at 50k rules)."""
    import socket

    from tracer.trace import nfchains
    from tracer.trace.nftrace import NETLINK_NETFILTER

    chains: list[tuple[str, str, str, str]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        s.settimeout(2.0)
        s.send(nfchains.getchain_dump_request(1))
        done = False
        while not done:
            got, done = nfchains.parse_chain_dump(s.recv(1 << 20))
            chains += got
    return nfchains.tables_on(chains)


def filter_view(legacy_saved: Optional[dict[str, str]] = None) -> Snapshot:
    """The tables where ACCEPT rules for a probe can live, for near misses: every ip/ip6/inet
    table but the iptables-nft nat tables (kube-proxy keeps tens of thousands of rules there and
    an ACCEPT in nat decides nothing), one `nft -a list table` each, with the `iptables -S` form
    of the iptables-nft filter tables (iptables-nft-save would list nat too: seconds)."""
    from tracer.trace.plan import TABLE_PREFIX

    texts, errs = [], []
    try:
        tables = hooked_tables()
    except OSError:  # netlink refused: nft prints the same (slower on big rulesets)
        tables = filter_tables(run(["nft", "list", "chains"]).stdout)
    for family, name in tables:
        if (family != "inet" and name == "nat") or name.startswith(TABLE_PREFIX):
            continue
        listed = run(["nft", "-a", "list", "table", family, name], check=False)
        if listed.returncode == 0:
            texts.append(listed.stdout)
            errs.append(listed.stderr)
    text = "".join(texts)
    ruleset = parse_nft_ruleset(text, managed_tables("".join(errs)))
    ipt: dict[str, str] = {}
    for family in IPT:
        if any(t.family == family and t.name == "filter" for t in ruleset.tables):
            spec = run([IPT[family], "-t", "filter", "-S"], check=False)
            if spec.returncode == 0:
                by_chain: dict[str, list[str]] = {}
                for line in spec.stdout.splitlines():
                    words = line.split()
                    if len(words) >= 2 and words[0] == "-A":
                        by_chain.setdefault(words[1], []).append(line)
                ipt[family] = save_text({"filter": by_chain})
    legacy_saved = legacy_saved or {}
    return Snapshot(with_legacy(with_iptables(merge_tables(ruleset), ipt), legacy_saved), text, ipt, legacy_saved)

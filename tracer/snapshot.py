"""Read the firewall of the calling thread's namespace: nft ruleset plus iptables-nft's own view."""
from __future__ import annotations

from dataclasses import dataclass

from .model import Ruleset
from .ruleset import attach_iptables, managed_tables, parse_iptables_save, parse_nft_ruleset
from .system import run


XTABLES_NAMES = frozenset({"filter", "nat", "mangle", "raw", "security"})


@dataclass(frozen=True)
class Snapshot:
    ruleset: Ruleset
    nft_text: str  # `nft -a list ruleset` as printed, the ground truth compared before/after
    ipt_text: dict[str, str]  # "ip"/"ip6" -> iptables-nft-save output, when that family has tables


IPT_SAVE = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}


def families_to_save(ruleset: Ruleset) -> list[str]:
    """nft flags a table as iptables-nft's only when it holds xt expressions, so every ip/ip6
    table with an x_tables name is asked about (attach_iptables keeps the text only where the
    rule counts agree): one command per family, none without such a table."""
    return [f for f in IPT_SAVE if any(t.family == f and t.name in XTABLES_NAMES for t in ruleset.tables)]


def with_iptables(ruleset: Ruleset, ipt: dict[str, str]) -> Ruleset:
    for family, text in ipt.items():
        ruleset = attach_iptables(ruleset, family, parse_iptables_save(text))
    return ruleset


def assemble(nft_stdout: str, nft_stderr: str, ipt: dict[str, str]) -> Ruleset:
    """The model from the tools' outputs (pure: also used to replay a saved evidence bundle)."""
    return with_iptables(parse_nft_ruleset(nft_stdout, managed_tables(nft_stderr)), ipt)


def take() -> Snapshot:
    listed = run(["nft", "-a", "list", "ruleset"])
    ruleset = parse_nft_ruleset(listed.stdout, managed_tables(listed.stderr))
    ipt = {f: run([IPT_SAVE[f]], check=False).stdout for f in families_to_save(ruleset)}
    return Snapshot(with_iptables(ruleset, ipt), listed.stdout, ipt)

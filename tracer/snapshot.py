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


def take() -> Snapshot:
    listed = run(["nft", "-a", "list", "ruleset"])
    managed = managed_tables(listed.stderr)
    ruleset = parse_nft_ruleset(listed.stdout, managed)
    ipt: dict[str, str] = {}
    # nft flags a table as iptables-nft's only when it holds xt expressions, so any ip/ip6 table
    # with an x_tables name is asked about; attach_iptables keeps the text only where the rule
    # counts agree. One command per family, and none without such a table.
    for family, tool in (("ip", "iptables-nft-save"), ("ip6", "ip6tables-nft-save")):
        if any(t.family == family and t.name in XTABLES_NAMES for t in ruleset.tables):
            ipt[family] = run([tool], check=False).stdout
            ruleset = attach_iptables(ruleset, family, parse_iptables_save(ipt[family]))
    return Snapshot(ruleset, listed.stdout, ipt)

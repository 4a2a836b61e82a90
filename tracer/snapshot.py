"""Read the firewall of the calling thread's namespace: nft ruleset plus iptables-nft's own view,
and iptables-legacy (x_tables) tables when the namespace has any."""
from __future__ import annotations

from dataclasses import dataclass, field

from .model import Backend, Ruleset
from .ruleset import LEGACY_NAMES, LEGACY_SAVE, attach_iptables, managed_tables, parse_iptables_save, parse_nft_ruleset
from .system import proc_net, run


XTABLES_NAMES = frozenset({"filter", "nat", "mangle", "raw", "security"})


@dataclass(frozen=True)
class Snapshot:
    ruleset: Ruleset
    nft_text: str  # `nft -a list ruleset` as printed, the ground truth compared before/after
    ipt_text: dict[str, str]  # "ip"/"ip6" -> iptables-nft-save output, when that family has tables
    legacy_text: dict[str, str] = field(default_factory=dict)  # "ip"/"ip6" -> iptables-legacy-save output

    @property
    def legacy_listing(self) -> str:
        return legacy_listing(self.ruleset)


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


def with_legacy(ruleset: Ruleset, legacy: dict[str, str]) -> Ruleset:
    """Add the iptables-legacy tables (pure); they keep their own backend beside nft's."""
    if not legacy:
        return ruleset
    from .kernplan import legacy_tables  # the nft-only path never loads the kernel-log modules

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
    return with_legacy(with_iptables(parse_nft_ruleset(nft_stdout, managed_tables(nft_stderr)), ipt), legacy or {})


def legacy_families() -> list[str]:
    """Families with x_tables tables in this namespace: reading /proc costs nothing, so the
    nft-only path runs no legacy tool at all."""
    return [f for f, name in LEGACY_NAMES.items() if proc_net(name).strip()]


def take() -> Snapshot:
    listed = run(["nft", "-a", "list", "ruleset"])
    ruleset = parse_nft_ruleset(listed.stdout, managed_tables(listed.stderr))
    ipt = {f: run([IPT_SAVE[f]], check=False).stdout for f in families_to_save(ruleset)}
    legacy = {f: run([LEGACY_SAVE[f]], check=False).stdout for f in legacy_families()}
    return Snapshot(with_legacy(with_iptables(ruleset, ipt), legacy), listed.stdout, ipt, legacy)

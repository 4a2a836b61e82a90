"""Read the firewall of the calling thread's namespace (the I/O half of tracer/snapshot.py)."""
from __future__ import annotations

from typing import Iterable, Optional

from tracer.errors import CommandError
from tracer.ruleset import LEGACY_NAMES, LEGACY_SAVE, managed_tables, parse_nft_ruleset
from tracer.snapshot import (
    IPT,
    IPT_SAVE,
    XTABLES_NAMES,
    ChainKey,
    Snapshot,
    assemble,
    families_to_save,
    merge_tables,
    save_text,
    with_iptables,
    with_legacy,
)
from tracer.system import proc_net, run


def legacy_families() -> list[str]:
    """Families with x_tables tables in this namespace: reading /proc costs nothing, so the
    nft-only path runs no legacy tool at all."""
    return [f for f, name in LEGACY_NAMES.items() if proc_net(name).strip()]


def legacy() -> dict[str, str]:
    """iptables-legacy-save output of each family that has x_tables tables."""
    return {f: run([LEGACY_SAVE[f]], check=False).stdout for f in legacy_families()}


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

"""Read the firewall of the calling thread's namespace (the I/O half of tracer/snapshot.py)."""
from __future__ import annotations

from typing import Iterable, Optional

from tracer.errors import CommandError
from tracer.model import Ruleset
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


def chains(keys: Iterable[ChainKey], legacy_saved: Optional[dict[str, str]] = None,
           wanted: Optional[dict[ChainKey, frozenset[int]]] = None) -> Snapshot:
    """Only the given chains (a chain deleted meanwhile is skipped; any other failure to read
    one is an error: explaining a verdict with rules we could not read would be guesswork).
    `legacy_saved`: the iptables-legacy-save outputs read before the run, added as they are.
    `wanted`: the handles a report will show, per chain; a chain of more than
    sparse.SPARSE_FROM rules then holds only those rules, with their real numbers (tracer/sparse.py)."""
    keys = sorted(set(keys))
    done: frozenset[ChainKey] = frozenset()
    extra, extra_text, extra_ipt = None, "", {}
    if wanted is not None:
        from tracer import sparse

        done, extra, extra_text, extra_ipt = sparse.read(keys, wanted, _list)
    ruleset, text, ipt_text = _list([k for k in keys if k not in done])
    legacy_saved = legacy_saved or {}
    ruleset = with_legacy(ruleset, legacy_saved)
    if done and extra is not None:
        ruleset = sparse.join(ruleset, extra)
        text += extra_text
        ipt_text = {f: ipt_text.get(f, "") + extra_ipt.get(f, "") for f in {*ipt_text, *extra_ipt}}
    return Snapshot(ruleset, text, ipt_text, legacy_saved, done)


def _list(keys: Iterable[ChainKey]) -> tuple[Ruleset, str, dict[str, str]]:
    """`nft -a list chain` and `iptables -S CHAIN` of each chain: (model, nft's text, iptables' text)."""
    texts, errs = [], []
    ipt: dict[str, dict[str, dict[str, list[str]]]] = {}
    for family, table, chain in keys:
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
    return assemble(text, "".join(errs), ipt_text), text, ipt_text

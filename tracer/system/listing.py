"""Read the firewall of the calling thread's namespace (the I/O half of tracer/ruleset/snapshot.py)."""
from __future__ import annotations

from typing import Iterable, Optional

from tracer.errors import CommandError
from tracer.model import Ruleset
from tracer.ruleset import LEGACY_NAMES, LEGACY_SAVE, managed_tables, parse_nft_ruleset
from tracer.ruleset.snapshot import (
    IPT,
    IPT_SAVE,
    XTABLES_NAMES,
    ChainKey,
    Snapshot,
    assemble,
    families_to_save,
    filter_tables,
    merge_tables,
    save_text,
    with_iptables,
    with_legacy,
)
from tracer.system import proc_net, run
from tracer.plan.plan import TABLE_PREFIX
from tracer.plan import proof
from tracer.collect import tables
from tracer.plan.proof import Scope


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
    sparse.SPARSE_FROM rules then holds only those rules, with their real numbers (tracer/system/sparse.py)."""
    keys = sorted(set(keys))
    done: frozenset[ChainKey] = frozenset()
    extra: Optional[Ruleset] = None
    extra_text = ""
    extra_ipt: dict[str, str] = {}
    if wanted is not None:
        from tracer.system import sparse

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


# ---------------------------------------------------------------------------------------------
# The cleanup proof's listings (tracer/plan/proof.py compares them): only what a run may touch.


def proof_state(scope: Scope, legacy_saved: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The objects of `scope` as they are now: the table list (over netlink: one dump, no rule
    read), the tables fwtrace adds to in full, and the x_tables tables. `legacy_saved`: the
    iptables-legacy-save outputs already read (no second save)."""
    def other_run(family: str, table: str) -> bool:
        return table.startswith(TABLE_PREFIX) and table != scope.own_table

    state = {k: v for k, v in nft_tables().items() if not other_run(*k.split()[1:3])}
    for family, table in scope.tables:
        listed = run(["nft", "-j", "-s", "list", "table", family, table], check=False)
        if listed.returncode == 0:
            state.update(proof.nft_objects(listed.stdout, own_mark="fwtrace:" + scope.own_table[len(TABLE_PREFIX):]))
        elif "No such file or directory" not in listed.stderr:
            raise CommandError(list(listed.argv), listed.returncode, listed.stderr)
    for family in scope.legacy_families:
        names = proc_net(LEGACY_NAMES[family])
        if not names.strip():
            continue
        saved = (legacy_saved or {}).get(family)
        if saved is None:
            saved = run([LEGACY_SAVE[family]], check=False).stdout
        state.update(proof.legacy_objects(family, names, saved))
    return state


def nft_tables() -> dict[str, str]:
    """Every nf_tables table of the calling thread's namespace over netlink (tracer/collect/tables.py):
    one dump, whatever the number of rules."""
    import socket

    from tracer.collect.nftrace import NETLINK_NETFILTER

    data = b""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        s.settimeout(2.0)
        s.send(tables.gettable_request(1))
        while True:
            data += s.recv(1 << 16)
            out, done = tables.parse_tables(data)
            if done:
                return out
def hooked_tables() -> list[tuple[str, str]]:
    """The ip/ip6/inet tables with a base chain on input or forward, from one NFT_MSG_GETCHAIN
    dump over netlink in the calling thread's namespace (milliseconds at 50k rules)."""
    import socket

    from tracer.collect import nfchains
    from tracer.collect.nftrace import NETLINK_NETFILTER

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
    from tracer.plan.plan import TABLE_PREFIX

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

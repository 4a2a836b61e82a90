"""Read a long chain sparsely: the number of every rule, the text of only the rules a report shows.

A chain of more than SPARSE_FROM rules is not listed. Its rules' handles come in chain order from
one netlink dump (tracer/system/nlrules.py); the rules the probes met are copied, attributes as the kernel
holds them, into the same table and chain of a scratch network namespace that only this thread
lives in, and listed there by the same `nft -a list chain` and `iptables -S` as any other chain:
the text is nft's and iptables' own rendering, the numbers and handles are the real chain's.
The scratch namespace has no interfaces and dies with the thread. Anything unusual (sets or named
objects in a rule, a family other than ip/ip6/inet, a refusal) leaves the chain to a full listing.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from typing import Callable, Optional

from tracer.system import nlrules
from tracer.model import Backend, Chain, Ruleset, Table
from tracer.system import CLONE_NEWNET, libc, run

SPARSE_FROM = 1000  # rules; below it a full listing costs a few ms and stays the one code path
ChainKey = tuple[str, str, str]


def table_block(chains_text: str, family: str, table: str) -> Optional[str]:
    """The `table F T { ... }` block of `nft list chains` output: chain headers, no rules (pure)."""
    m = re.search(rf"^table {re.escape(family)} {re.escape(table)} \{{\n.*?^\}}\n", chains_text, re.M | re.S)
    return m.group(0) if m else None


def renumber(chain: Chain, order: list[tuple[int, int]]) -> Optional[Chain]:
    """The scratch copy's rules with the real chain's numbers and handles: order[i] is
    (number, handle) of the i-th copied rule. None when the copy does not hold them all (pure)."""
    if len(chain.rules) != len(order):
        return None
    rules = tuple(dataclasses.replace(r, number=n, handle=h) for r, (n, h) in zip(chain.rules, order))
    return dataclasses.replace(chain, rules=rules)


def join(ruleset: Ruleset, extra: Ruleset) -> Ruleset:
    """Add extra's chains to ruleset's nf_tables table of the same name (never a legacy one)."""
    legacy = Backend.IPTABLES_LEGACY
    tables = list(ruleset.tables)
    for t in extra.tables:
        i = next((i for i, o in enumerate(tables) if (o.family, o.name) == (t.family, t.name) and o.backend is not legacy),
                 None)
        if i is None:
            tables.append(t)
        else:
            o = tables[i]
            backend = t.backend if o.backend is Backend.NFT else o.backend
            tables[i] = Table(o.family, o.name, o.chains + t.chains, backend)
    return Ruleset(tuple(tables))


def _dumps(keys: list[ChainKey], wanted: dict[ChainKey, frozenset[int]]) -> dict[ChainKey, nlrules.ChainRules]:
    out = {}
    for key in keys:
        if key[0] not in ("ip", "ip6", "inet"):
            continue
        try:
            d = nlrules.dump_chain(*key, wanted.get(key, frozenset()))
        except OSError:
            continue  # the full listing will say what is wrong
        if len(d.handles) > SPARSE_FROM and not any(nlrules.refers_to_objects(r) for r in d.raw.values()):
            out[key] = d
    return out


def _in_scratch(work: Callable[[], object]) -> object:
    """Run `work` in a thread of its own inside a new, empty network namespace."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            if libc().unshare(CLONE_NEWNET) != 0:
                raise OSError("unshare(CLONE_NEWNET) failed")
            box["value"] = work()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=body, name="fwtrace-sparse")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def read(keys: list[ChainKey], wanted: dict[ChainKey, frozenset[int]],
         list_chains: Callable[[list[ChainKey]], tuple[Ruleset, str, dict[str, str]]],
         ) -> tuple[frozenset[ChainKey], Ruleset, str, dict[str, str]]:
    """(the keys read sparsely, their chains, nft's text of the copies, iptables' text of the copies).
    `list_chains` is the ordinary listing, run here inside the scratch namespace."""
    dumps = _dumps(keys, wanted)
    if not dumps:
        return frozenset(), Ruleset(), "", {}
    headers = run(["nft", "list", "chains"]).stdout
    tables = sorted({(f, t) for f, t, _ in dumps})
    blocks = [table_block(headers, f, t) for f, t in tables]
    if any(b is None for b in blocks):
        return frozenset(), Ruleset(), "", {}

    def copy_and_list() -> tuple[Ruleset, str, dict[str, str]]:
        run(["nft", "-f", "-"], input="".join(b for b in blocks if b))
        for family, table in tables:
            nlrules.add_rules(family, table, [(c, d.raw[h]) for (f, t, c), d in dumps.items() if (f, t) == (family, table)
                                              for h in d.handles if h in d.raw])
        return list_chains(sorted(dumps))

    try:
        listed: tuple[Ruleset, str, dict[str, str]] = _in_scratch(copy_and_list)  # type: ignore[assignment]
        ruleset, text, ipt = listed
    except Exception:  # noqa: BLE001  any trouble with the copy: the chains are listed in full instead
        return frozenset(), Ruleset(), "", {}
    tables_out = []
    for t in ruleset.tables:
        chains = []
        for c in t.chains:
            d = dumps[(t.family, t.name, c.name)]
            got = renumber(c, [(i, h) for i, h in enumerate(d.handles, 1) if h in d.raw])
            if got is None:
                return frozenset(), Ruleset(), "", {}
            chains.append(got)
        tables_out.append(dataclasses.replace(t, chains=tuple(chains)))
    return frozenset(dumps), Ruleset(tuple(tables_out)), text, ipt

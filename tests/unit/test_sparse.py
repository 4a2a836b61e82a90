"""The pure parts of sparse reading (tracer/system/sparse.py): chain headers, renumbering, joining."""
from __future__ import annotations

from tracer.system import sparse
from tracer.model import Backend, Chain, Rule, Ruleset, Table

HEADERS = """table ip filter {
\tchain INPUT {
\t\ttype filter hook input priority filter; policy drop;
\t}
\tchain user {
\t}
}
table inet t {
\tchain c {
\t\ttype filter hook input priority filter + 10; policy accept;
\t}
}
"""


def test_table_block_is_one_table_of_nft_list_chains() -> None:
    block = sparse.table_block(HEADERS, "ip", "filter")
    assert block is not None and block.startswith("table ip filter {") and "chain user" in block
    assert "inet" not in block
    assert sparse.table_block(HEADERS, "inet", "t") == HEADERS[HEADERS.index("table inet t"):]
    assert sparse.table_block(HEADERS, "ip6", "filter") is None


def rule(n: int, h: int, text: str = "drop") -> Rule:
    return Rule("ip", "filter", "INPUT", n, h, text)


def test_renumber_gives_the_real_numbers_and_handles() -> None:
    copy = Chain("ip", "filter", "INPUT", "input", "filter", "drop", (rule(1, 3, "a"), rule(2, 4, "b")))
    got = sparse.renumber(copy, [(7, 70), (20001, 20002)])
    assert got is not None and got.rules == (rule(7, 70, "a"), rule(20001, 20002, "b"))
    assert got.policy == "drop"
    assert sparse.renumber(copy, [(7, 70)]) is None  # the copy lost or gained a rule: not trusted


def test_join_adds_chains_to_the_nft_table_never_the_legacy_one() -> None:
    legacy = Table("ip", "filter", (Chain("ip", "filter", "INPUT"),), Backend.IPTABLES_LEGACY)
    nft = Table("ip", "filter", (Chain("ip", "filter", "FORWARD"),), Backend.NFT)
    extra = Ruleset((Table("ip", "filter", (Chain("ip", "filter", "INPUT", rules=(rule(5, 9),)),), Backend.IPTABLES_NFT),))
    joined = sparse.join(Ruleset((legacy, nft)), extra)
    assert joined.tables[0] == legacy
    assert [c.name for c in joined.tables[1].chains] == ["FORWARD", "INPUT"]
    assert joined.tables[1].backend is Backend.IPTABLES_NFT
    alone = sparse.join(Ruleset((legacy,)), extra)
    assert alone.tables[1] == extra.tables[0]

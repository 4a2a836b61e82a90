"""The nft and iptables-save parsers, on real output captured by scripts/capture-test-data."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.model import Backend, Ruleset
from tracer.ruleset import (
    IptChain,
    attach_iptables,
    managed_tables,
    parse_iptables_save,
    parse_nft_ruleset,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def data(name: str) -> str:
    return (DATA / name).read_text()


def snapshot(case: str, save: str = "", family: str = "ip") -> Ruleset:
    """What the system layer builds: nft listing + warnings, then the iptables view attached."""
    rs = parse_nft_ruleset(data(f"nft-list-{case}.txt"), managed_tables(data(f"nft-list-stderr-{case}.txt")))
    return attach_iptables(rs, family, parse_iptables_save(data(save))) if save else rs


# ---------------------------------------------------------------------------------------------
# nft -a list ruleset


def test_seed_tables_chains_and_policies() -> None:
    rs = snapshot("seed")
    assert [(t.family, t.name, t.backend) for t in rs.tables] == [("ip", "filter", Backend.IPTABLES_NFT)]
    chains = rs.tables[0].chains
    assert [(c.name, c.hook, c.priority, c.policy) for c in chains] == [
        ("INPUT", "input", "filter", "accept"),
        ("FORWARD", "forward", "filter", "accept"),
        ("OUTPUT", "output", "filter", "accept"),
        ("fail2ban-SSH", None, None, None),
    ]
    assert chains[2].rules == ()


def test_seed_rules_numbers_handles_and_texts() -> None:
    chain = snapshot("seed").chain("ip", "filter", "INPUT")
    assert chain is not None
    assert [(r.number, r.handle) for r in chain.rules] == [(n, n + 4) for n in range(1, 9)]
    assert chain.rules[0].text == "tcp dport 22 counter jump fail2ban-SSH"
    assert chain.rules[3].text == "meta l4proto tcp ct state new tcp dport 22 counter accept"
    assert chain.rules[6].text == "counter reject with icmp type host-prohibited"
    assert chain.rules[7].text == "tcp dport 8080 counter accept"
    assert chain.rules[7].handle == 12
    assert all(r.ipt is None for r in chain.rules)  # until attach_iptables


def test_counters_are_reduced_so_texts_survive_traffic() -> None:
    quiet, busy = data("nft-list-seed.txt"), data("nft-list-counters-seed.txt")
    assert "counter packets 2 bytes 120" in busy and quiet != busy
    assert parse_nft_ruleset(busy) == parse_nft_ruleset(quiet)


def test_managed_tables_from_warnings() -> None:
    assert managed_tables(data("nft-list-stderr-seed.txt")) == {("ip", "filter")}
    assert managed_tables(data("nft-list-stderr-matchers.txt")) == {
        ("ip", "filter"), ("ip", "nat"), ("ip", "mangle"), ("ip", "raw")}
    assert managed_tables(data("nft-list-stderr-ip6.txt")) == {("ip6", "filter")}
    assert managed_tables(data("nft-list-stderr-native.txt")) == frozenset()
    assert managed_tables("Error: syntax error\n") == frozenset()


def test_native_tables_skip_sets_maps_and_objects() -> None:
    rs = snapshot("native")
    assert [(t.family, t.name) for t in rs.tables] == [
        ("inet", "fw"), ("ip", "nat"), ("netdev", "edge"), ("netdev", "hookless"),
        ("bridge", "br"), ("ip6", "raw6"), ("ip", "sleepy")]
    assert all(t.backend is Backend.NFT for t in rs.tables)
    fw = rs.tables[0]
    assert [c.name for c in fw.chains] == ["input", "services", "empty", "output"]
    assert [c.is_base for c in fw.chains] == [True, False, False, True]
    assert fw.chains[0].policy == "drop"
    assert fw.chains[3].priority == "filter + 10"
    assert fw.chains[2].rules == ()


def test_native_rule_texts_keep_quoted_braces_and_hashes() -> None:
    rs = snapshot("native")
    rules = {r.handle: r for r in rs.tables[0].chains[0].rules}
    assert len(rules) == 20
    assert rules[12].text == 'ct state invalid counter drop comment "invalid # packets"'
    assert rules[18].text == "ip saddr { 192.0.2.10, 192.0.2.20 } tcp dport { 25, 587 } accept"
    assert rules[25].text == 'tcp flags syn / syn,ack log prefix "syn {x} # " drop'
    assert rules[32].text == 'iifname @ifs counter comment "close } brace"'
    assert rules[32].number == 20
    services = rs.chain("inet", "fw", "services")
    assert services is not None
    assert [r.text for r in services.rules] == [
        "tcp dport 1234 accept", "tcp dport 1235 goto empty", "return"]


def test_native_nat_netdev_and_priorities() -> None:
    rs = snapshot("native")
    nat = rs.table("ip", "nat")
    assert nat is not None
    assert [(c.hook, c.priority) for c in nat.chains] == [
        ("prerouting", "dstnat"), ("postrouting", "srcnat + 10")]
    assert nat.chains[0].rules[0].text == 'iifname "fwth0" tcp dport 8080 dnat to 10.0.0.2:80'
    edge = rs.table("netdev", "edge")
    assert edge is not None
    assert [(c.name, c.hook, c.priority, c.policy) for c in edge.chains] == [
        ("ing", "ingress", "-500", "accept"),
        ("ing1", "ingress", "-499", "accept"),
        ("helper", None, None, None),
    ]
    assert rs.chain("ip", "sleepy", "c") is not None


def test_mixed_listing_tells_managed_from_native() -> None:
    rs = snapshot("mixed")
    backends = {(t.family, t.name): t.backend for t in rs.tables}
    assert backends[("ip", "filter")] is Backend.IPTABLES_NFT
    assert backends[("inet", "fw")] is Backend.NFT
    assert backends[("ip", "nat")] is Backend.NFT  # native nat table, no warning for it


def test_listing_without_handles() -> None:
    text = (
        "table inet t {\n\tchain c {\n\t\tcomment \"x\"\n"
        "\t\ttype filter hook input priority 0; policy accept;\n"
        "\t\tcounter packets 3 bytes 9 accept\n\t}\n}\n"
    )
    chain = parse_nft_ruleset(text).tables[0].chains[0]
    assert (chain.hook, chain.priority, chain.policy) == ("input", "0", "accept")
    assert [(r.handle, r.text) for r in chain.rules] == [(None, "counter accept")]


def test_flowtables_and_unclosed_blocks() -> None:
    text = (
        "table inet f { # handle 3\n"
        "\tflowtable ft { # handle 2\n\t\thook ingress priority filter\n\t\tdevices = { eth0, eth1 }\n\t}\n\n"
        "\tchain fwd { # handle 1\n\t\ttype filter hook forward priority filter; policy accept;\n"
        "\t\tip protocol tcp flow add @ft # handle 4\n"
        "\t\tlog prefix \"counter packets 1 bytes 2\" # handle 5\n"
        "table ip next { # handle 9\n\tchain c { # handle 1\n\t\tdrop # handle 2\n"
    )
    rs = parse_nft_ruleset(text)
    assert [t.name for t in rs.tables] == ["f", "next"]
    assert [r.text for r in rs.rules()] == [
        "ip protocol tcp flow add @ft", 'log prefix "counter packets 1 bytes 2"', "drop"]


# ---------------------------------------------------------------------------------------------
# iptables-save


def test_seed_iptables_save() -> None:
    saved = parse_iptables_save(data("iptables-save-seed.txt"))
    assert list(saved) == ["filter"]
    chains = saved["filter"].chains
    assert [(c.name, c.policy, len(c.rules)) for c in chains] == [
        ("INPUT", "ACCEPT", 8), ("FORWARD", "ACCEPT", 1), ("OUTPUT", "ACCEPT", 0), ("fail2ban-SSH", None, 2)]
    assert chains[0].rules[6] == "-A INPUT -j REJECT --reject-with icmp-host-prohibited"


def test_counters_of_iptables_save_c_are_stripped() -> None:
    plain = parse_iptables_save(data("iptables-save-seed.txt"))
    counted = parse_iptables_save(data("iptables-save-c-seed.txt"))
    assert "[2:120] -A INPUT -i lo -j ACCEPT" in data("iptables-save-c-seed.txt")
    assert counted == plain


def test_matchers_iptables_save_tables_in_printed_order() -> None:
    saved = parse_iptables_save(data("iptables-save-matchers.txt"))
    assert list(saved) == ["mangle", "raw", "filter", "nat"]
    filt = saved["filter"]
    assert [c.name for c in filt.chains] == ["INPUT", "FORWARD", "OUTPUT", "LOGDROP"]
    assert filt.chain("LOGDROP") == IptChain(
        "LOGDROP", None, ('-A LOGDROP -j LOG --log-prefix "drop "', "-A LOGDROP -j DROP"))
    assert filt.chain("nope") is None
    assert '-A INPUT -p tcp -m comment --comment "allow web # {x}" -m tcp --dport 80 -j ACCEPT' in (
        filt.chains[0].rules)


def test_iptables_save_odd_input() -> None:
    text = "-A INPUT -j DROP\n*filter\n:INPUT DROP\n-A FOO -j ACCEPT\n-A\n*\n:\nCOMMIT\n-A INPUT -j X\n"
    saved = parse_iptables_save(text)
    assert [(c.name, c.policy, c.rules) for c in saved["filter"].chains] == [
        ("INPUT", "DROP", ()), ("FOO", None, ("-A FOO -j ACCEPT",))]


# ---------------------------------------------------------------------------------------------
# attach_iptables


def test_seed_attach() -> None:
    rs = snapshot("seed", "iptables-save-seed.txt")
    rule7 = rs.chain("ip", "filter", "INPUT").rules[6]  # type: ignore[union-attr]
    assert rule7.ipt == "-A INPUT -j REJECT --reject-with icmp-host-prohibited"
    assert rule7.handle == 11 and rule7.text == "counter reject with icmp type host-prohibited"
    rule8 = rs.rule_by_handle("ip", "filter", "INPUT", 12)
    assert rule8 is not None and rule8.ipt == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"
    f2b = rs.chain("ip", "filter", "fail2ban-SSH")
    assert f2b is not None
    assert [r.ipt for r in f2b.rules] == [
        "-A fail2ban-SSH -s 117.239.37.150/32 -j REJECT --reject-with icmp-port-unreachable",
        "-A fail2ban-SSH -s 117.253.208.237/32 -j REJECT --reject-with icmp-port-unreachable"]


def test_attach_marks_backend_even_without_the_warning() -> None:
    rs = parse_nft_ruleset(data("nft-list-seed.txt"))
    assert rs.tables[0].backend is Backend.NFT
    attached = attach_iptables(rs, "ip", parse_iptables_save(data("iptables-save-seed.txt")))
    assert attached.tables[0].backend is Backend.IPTABLES_NFT
    assert rs.tables[0].chains[0].rules[0].ipt is None  # the input is left alone


def test_attach_respects_family() -> None:
    rs = snapshot("ip6")
    v6 = parse_iptables_save(data("ip6tables-save-ip6.txt"))
    assert attach_iptables(rs, "ip", v6) == rs
    rules = attach_iptables(rs, "ip6", v6).chain("ip6", "filter", "INPUT").rules  # type: ignore[union-attr]
    assert rules[6].ipt == "-A INPUT ! -s 2001:db8:1::1/128 -p tcp -m multiport --dports 80,443 -j ACCEPT"
    assert rules[6].text == "meta l4proto tcp ip6 saddr != 2001:db8:1::1 tcp dport { 80, 443 } counter accept"


def test_matchers_attach_every_table() -> None:
    rs = snapshot("matchers", "iptables-save-matchers.txt")
    assert all(r.ipt is not None for r in rs.rules())
    nat = rs.chain("ip", "nat", "PREROUTING")
    assert nat is not None
    assert nat.rules[0].ipt == "-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80"
    assert nat.rules[0].text == "tcp dport 8080 counter dnat to 10.0.0.2:80"


def test_attach_does_not_guess_when_iptables_save_stopped_early() -> None:
    # iptables-save gave up (exit 3) at an nft-added rule it cannot parse: INPUT has 11 rules
    # in nft but 10 lines, later chains have none; no rule of those chains gets a line.
    assert "Parsing nftables rule failed" in data("iptables-save-stderr-incompat.txt")
    rs = snapshot("incompat", "iptables-save-incompat.txt")
    assert rs.tables[0].backend is Backend.IPTABLES_NFT
    assert [c.name for c in rs.tables[0].chains if c.rules] == ["INPUT", "FORWARD", "fail2ban-SSH"]
    assert all(r.ipt is None for r in rs.rules())


# ---------------------------------------------------------------------------------------------
# Never raise

CAPTURES = sorted(p.name for p in DATA.glob("nft-list-*.txt")) + sorted(
    p.name for p in DATA.glob("ip*tables-save-*.txt"))


@st.composite
def mutated_capture(draw: st.DrawFn) -> str:
    lines = data(draw(st.sampled_from(CAPTURES))).splitlines()
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["drop", "dup", "chars", "cut"]))
        if kind == "drop":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:
            j = draw(st.integers(0, len(lines[i])))
            noise = draw(st.text(alphabet='{}"#\\ ;[]:-!*\t\x00é', max_size=4))
            lines[i] = lines[i][:j] + noise + lines[i][j:]
    return "\n".join(lines)


def _all_parsers(text: str) -> None:
    rs = parse_nft_ruleset(text, managed_tables(text))
    saved = parse_iptables_save(text)
    for family in ("ip", "ip6"):
        attach_iptables(rs, family, saved)
        attach_iptables(snapshot("seed"), family, saved)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_capture())
def test_parsers_survive_mutated_captures(text: str) -> None:
    _all_parsers(text)


@settings(max_examples=300)
@given(st.text())
def test_parsers_survive_arbitrary_text(text: str) -> None:
    _all_parsers(text)


STRUCTURE = [
    "table ip t {", "table", "chain c {", "}", "{", "type filter hook input priority 0; policy drop;",
    "# handle 7", "accept # handle 2", 'comment "{"', "elements = { 1,", "2 }", "*filter",
    ":INPUT ACCEPT [0:0]", "-A INPUT -j ACCEPT", "[1:2] -A c", "COMMIT", "set s {",
    "# Warning: table ip t is managed by iptables-nft",
]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(STRUCTURE), max_size=30))
def test_parsers_survive_shuffled_structure(lines: list[str]) -> None:
    _all_parsers("\n".join(lines))

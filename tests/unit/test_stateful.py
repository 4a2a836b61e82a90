"""The stateful matches a probe uses up (tracer/plan/stateful.py), on listings as nft 1.0.6 prints them."""
from __future__ import annotations

from tracer.plan import stateful

TERSE_SETS = """table inet filter {
\tset blocklist {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags interval
\t}
\tset seen {
\t\ttype ipv4_addr . inet_service
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 5m
\t}
}
table ip legacy_like {
\tmeter ssh4 {
\t\ttype ipv4_addr
\t\tsize 65535
\t}
}
"""
SEEN = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "seen", "table": "filter", '
        '"type": ["ipv4_addr", "inet_service"], "elem": [{"elem": {"val": {"concat": ["192.0.2.2", 22]}, "expires": 299}}, '
        '{"concat": ["198.51.100.9", 22]}]}}]}')
METER = ('{"nftables": [{"meter": {"family": "inet", "name": "ssh4", "table": "filter", "elem": [{"elem": {"val": '
         '"192.0.2.2", "limit": {"rate": 3, "burst": 5, "per": "minute"}}}]}}]}')


def test_dynamic_sets_and_meters_found_static_sets_not() -> None:
    assert stateful.dynamic_sets(TERSE_SETS) == ["set inet filter seen", "meter ip legacy_like ssh4"]


def test_elements_keyed_as_nft_delete_element_takes_them() -> None:
    assert stateful.set_elements(SEEN) == ["192.0.2.2 . 22", "198.51.100.9 . 22"]
    assert stateful.set_elements(METER) == ["192.0.2.2"]
    assert stateful.set_elements("not json") == []


def test_objects_are_the_address_own_only() -> None:
    recent = {"SSH": "src=192.0.2.2 ttl: 64 last_seen: 4295592575 oldest_pkt: 1 4295592575\n",
              "OTHER": "src=192.0.2.22 ttl: 64 last_seen: 1 oldest_pkt: 1 1\n"}
    elements = {"set inet filter seen": stateful.set_elements(SEEN)}
    assert stateful.objects("192.0.2.2", recent, elements) == {
        "xt_recent SSH 192.0.2.2": "listed", "element set inet filter seen { 192.0.2.2 . 22 }": "element"}


def test_what_cannot_be_given_back_is_named() -> None:
    assert stateful.spent(["tcp dport 22 limit rate 3/minute accept", "-A INPUT -m hashlimit --hashlimit-name x"]) == \
        ("limit", "hashlimit")
    assert stateful.spent(["-A INPUT -p tcp -m connlimit --connlimit-above 3 -j REJECT"]) == ("connlimit",)
    assert stateful.spent(["tcp dport 22 accept"]) == ()
    text = stateful.warning(stateful.Found(("SSH",), ("set inet filter seen",), ("limit",)), "192.0.2.2")
    assert text is not None
    assert "real client's address (192.0.2.2)" in text and "xt_recent list SSH; set inet filter seen" in text
    assert "limit rules (tokens of a rate limit, a connection count) cannot be given back" in text
    assert stateful.warning(stateful.Found(), "192.0.2.2") is None

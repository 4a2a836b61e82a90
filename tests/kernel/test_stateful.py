"""Probes through stateful matches with a real client's address (issue 21): an xt_recent
throttle, an nft meter (a dynamic set with a per-element limit), a dynamic set filled by `add @set`
-- each left exactly as before the run, said before the probe goes out, and part of the cleanup
proof; what cannot be removed (elements of a `meter` statement's set) is named by the proof."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import structlog

from tracer.pipeline.driver import Run
from tracer.cli.lab import CLIENT4, SERVER4, Lab
from tracer.model import ProbeRequest, Proto
from tracer.report.outcome import ProbeReport

log = structlog.get_logger("test")

# ufw's `limit` and the common hand-written pair: the 6th new connection in 30 s is dropped.
RECENT = """*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name SSH --rsource
-A INPUT -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 --rttl --name SSH --rsource -j DROP
-A INPUT -p tcp --dport 22 -j ACCEPT
COMMIT
"""
NFT_DYNAMIC = """table inet filter {
\tset ssh_meter { type ipv4_addr; flags dynamic; }
\tset seen { type ipv4_addr . inet_service; flags dynamic,timeout; timeout 5m; }
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 ct state new add @seen { ip saddr . tcp dport }
\t\ttcp dport 22 ct state new update @ssh_meter { ip saddr limit rate over 3/minute } drop
\t}
}
"""
METER = """table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 ct state new meter ssh4 { ip saddr limit rate 3/minute } accept
\t}
}
"""


def recent(lab: Lab) -> str:
    return lab.run(lab.server, ["cat", "/proc/net/xt_recent/SSH"]).stdout


def stateful_listing(lab: Lab) -> str:
    """The sets with their elements (timeouts aside: they run down by themselves)."""
    text = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    return "\n".join(line.split(" expires ")[0] for line in text.splitlines())


def probe(lab: Lab, **kw: Any) -> ProbeReport:
    kw.setdefault("netns", lab.server)
    kw.setdefault("from_netns", lab.client)
    kw.setdefault("dst", SERVER4)
    return Run(ProbeRequest(dport=22, proto=Proto.TCP, **kw), log).execute()


def test_xt_recent_throttle_left_as_before(lab: Lab) -> None:
    lab.iptables_restore(lab.server, RECENT)
    lab.listen(lab.server, Proto.TCP, 22)
    assert recent(lab) == ""
    report = probe(lab)
    assert report.reached and report.cleanup_ok and report.leftover == ()
    assert recent(lab) == ""  # the real client is not on the throttle's list
    [warned] = [x for x in report.caveats if "stateful matches" in x]
    assert f"real client's address ({CLIENT4})" in warned and "xt_recent list SSH" in warned
    assert f"the entries of {CLIENT4} in xt_recent SSH" in report.checked


def test_xt_recent_entry_that_was_there_stays(lab: Lab) -> None:
    """A client already on the list keeps its entry (xt_recent cannot take the probe's hit back)."""
    lab.iptables_restore(lab.server, RECENT)
    lab.listen(lab.server, Proto.TCP, 22)
    lab.run(lab.server, ["sh", "-c", f"echo +{CLIENT4} > /proc/net/xt_recent/SSH"])
    report = probe(lab)
    assert report.reached and report.cleanup_ok
    assert recent(lab).startswith(f"src={CLIENT4} ")


def test_nft_meter_and_dynamic_set_left_as_before(lab: Lab) -> None:
    lab.nft(lab.server, NFT_DYNAMIC)
    lab.listen(lab.server, Proto.TCP, 22)
    before = stateful_listing(lab)
    report = probe(lab)
    assert report.reached and report.cleanup_ok and report.leftover == ()
    assert stateful_listing(lab) == before  # no element of the client's in either set
    [warned] = [x for x in report.caveats if "stateful matches" in x]
    assert "set inet filter seen" in warned and "set inet filter ssh_meter" in warned and "limit" in warned
    # A different client's element, there before the run, is not the probe's to remove.
    lab.run(lab.server, ["nft", "add", "element", "inet", "filter", "seen", "{ 198.51.100.9 . 22 }"])
    before = stateful_listing(lab)
    assert probe(lab).cleanup_ok and stateful_listing(lab) == before


def test_warning_is_said_before_the_probe_and_cleanup_replays_the_forget(lab: Lab, tmp_path: Any) -> None:
    """As a subprocess: the warning on stderr; killed after sending, `fwtrace cleanup` removes the entry."""
    from tracer.pipeline.driver import KILL_ENV

    lab.iptables_restore(lab.server, RECENT)
    lab.listen(lab.server, Proto.TCP, 22)
    env = {**os.environ, "FWTRACE_RUN_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "tracer", "probe", "--dport", "22", "--netns", lab.server, "--from-netns",
            lab.client, "--timeout", "0.5"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and "stateful matches" in r.stderr and recent(lab) == ""
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**env, KILL_ENV: "collect"})
    assert killed.returncode == -9 and recent(lab).startswith(f"src={CLIENT4} ")
    cleaned = subprocess.run([sys.executable, "-m", "tracer", "cleanup", "--netns", lab.server], capture_output=True,
                             text=True, timeout=60, env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "stateful matches" in cleaned.stdout and recent(lab) == ""


def test_meter_statement_elements_cannot_be_removed_and_the_proof_says_so(lab: Lab) -> None:
    lab.nft(lab.server, METER)
    lab.listen(lab.server, Proto.TCP, 22)
    report = probe(lab)
    assert not report.cleanup_ok
    [left] = report.leftover
    assert left.startswith(f"element meter inet filter ssh4 {{ {CLIENT4} }}: left behind (remedy: none: the kernel")


@pytest.mark.parametrize("rules", ["recent", "nft"])
def test_a_skipped_forget_is_caught_by_the_proof(lab: Lab, monkeypatch: Any, rules: str) -> None:
    """The proof must see the probes' entries: with the undo sabotaged they are named, with their remedy."""
    from tracer.system.cleanup import SKIP_UNDO_ENV

    if rules == "recent":
        lab.iptables_restore(lab.server, RECENT)
    else:
        lab.nft(lab.server, NFT_DYNAMIC)
    lab.listen(lab.server, Proto.TCP, 22)
    monkeypatch.setenv(SKIP_UNDO_ENV, "left in stateful matches")
    report = probe(lab)
    assert not report.cleanup_ok
    pre = f"ip netns exec {lab.server} "
    if rules == "recent":
        assert report.leftover == (f"xt_recent SSH {CLIENT4}: left behind (remedy: `{pre}sh -c 'echo -{CLIENT4} > "
                                   "/proc/net/xt_recent/SSH'`)",)
    else:
        assert sorted(report.leftover) == [
            f"element set inet filter seen {{ {CLIENT4} . 22 }}: left behind (remedy: `{pre}nft delete element inet "
            f"filter seen {{ {CLIENT4} . 22 }}`)",
            f"element set inet filter ssh_meter {{ {CLIENT4} }}: left behind (remedy: `{pre}nft delete element inet "
            f"filter ssh_meter {{ {CLIENT4} }}`)"]
    monkeypatch.delenv(SKIP_UNDO_ENV)


SPENT_IPT = """*filter
:INPUT ACCEPT [0:0]
:limit - [0:0]
-A INPUT -p tcp --dport 22 -m limit --limit 3/min -j ACCEPT
-A INPUT -p tcp --dport 23 -m hashlimit --hashlimit-upto 3/min --hashlimit-name h23 -j ACCEPT
-A INPUT -p tcp --dport 24 -m comment --comment "hashlimit connlimit" -j limit
COMMIT
"""
SPENT_NFT = """table inet other {
\tchain c {
\t\ttype filter hook input priority 10; policy accept;
\t\ttcp dport 25 ct count over 3 drop comment "limit"
\t}
}
"""


@pytest.mark.parametrize("rules", ["ipt", "nft", "meter", "comments only", "none"])
def test_spent_kinds_over_netlink_are_the_listings(lab: Lab, rules: str) -> None:
    """The kinds of state no undo gives back, found in the rules' expressions over netlink (not
    in comments nor chain names), are what `nft -t list ruleset` shows."""
    from tracer import system
    from tracer.plan import stateful
    from tracer.system import nlrules

    if rules == "ipt":
        lab.iptables_restore(lab.server, SPENT_IPT)
    elif rules == "nft":
        lab.nft(lab.server, SPENT_NFT)
    elif rules == "meter":
        lab.nft(lab.server, NFT_DYNAMIC)
    elif rules == "comments only":
        lab.iptables_restore(lab.server, SPENT_IPT.replace("-m limit --limit 3/min ", "").replace(
            "-m hashlimit --hashlimit-upto 3/min --hashlimit-name h23 ", ""))
    with system.netns(lab.server):
        kinds = nlrules.expressions_used(stateful.SPENT_EXPRESSIONS)
    text = stateful.spent([lab.run(lab.server, ["nft", "-t", "list", "ruleset"]).stdout])
    expected = {"ipt": {"limit", "hashlimit"}, "nft": {"connlimit"}, "meter": {"limit"}}.get(rules, set())
    assert kinds == expected and set(text) == expected


@pytest.mark.parametrize("rules", ["meter only", "dynamic set", "plain set", "none"])
def test_dynamic_set_check_agrees_with_nft_listings(lab: Lab, rules: str) -> None:
    """nlrules.dynamic_set_exists (one GETSET dump) is False only where `nft -t list meters` lists
    no meter and `nft -t list sets` no dynamic set: skipping the meters listing then loses nothing."""
    from tracer import system
    from tracer.plan import stateful
    from tracer.system import nlrules

    if rules == "meter only":
        lab.nft(lab.server, METER)
    elif rules == "dynamic set":
        lab.nft(lab.server, "table ip d {\n\tset seen { type ipv4_addr; flags dynamic; }\n}\n")
    elif rules == "plain set":
        lab.nft(lab.server, "table ip p {\n\tset s { type ipv4_addr; elements = { 10.0.0.1 } }\n}\n")
    with system.netns(lab.server):
        exists = nlrules.dynamic_set_exists()
    listed = stateful.dynamic_sets("".join(lab.run(lab.server, ["nft", "-t", "list", w]).stdout for w in ("sets", "meters")))
    assert exists == bool(listed) == (rules in ("meter only", "dynamic set"))

"""The report as the user reads it (tracer.render.terminal, plain text), rendered from results
replayed out of captured bundles: every rule before the decision accounted for, the deciding
rule, the fix, and the cleanup proof's wording.

Rendered wide (1000 columns) so that each row is one line and an assertion does not depend on
where a row folds; the 80-column layout itself is test_render.py's golden files.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from tracer import diagnose
from tracer.errors import ExitStatus
from tracer.pipeline.evidence import replay, replay_report
from tracer.system.bundle_io import read_dir as read_bundle
from tracer.model import ProbeRequest
from tracer.report.outcome import ProbeReport, build_report, exit_status
from tracer.render import markdown, terminal
from tracer.ruleset.snapshot import assemble

BUNDLES = Path(__file__).parent.parent / "data" / "bundles"


def text(rep: ProbeReport) -> str:
    return terminal.text(rep, width=1000)


def report_of(name: str, generations: tuple[int, ...] = (5, 6, 7), dport: int = 8080) -> ProbeReport:
    files = read_bundle(str(BUNDLES / name))
    ipt = {"ip": files["iptables-nft-save.txt"].decode()} if "iptables-nft-save.txt" in files else {}
    ctx = diagnose.Context(assemble(files["ruleset.nft"].decode(), "", ipt), (), local=False)
    return replay_report(files, ProbeRequest(dport=dport, netns="srv", from_netns="cli"), ctx, generations=generations,
                         unchanged=True)


def bare(files: dict[str, bytes]) -> diagnose.Context:
    return diagnose.Context(assemble(files["ruleset.nft"].decode(), "", {}), (), local=False)


def in_order(text: str, *lines: str) -> None:
    """`lines` are whole lines of `text`, one right after the other."""
    got = text.splitlines()
    assert lines[0] in got, f"{lines[0]!r} not in\n{text}"
    i = got.index(lines[0])
    assert tuple(got[i:i + len(lines)]) == lines, "\n".join(got[i:i + len(lines)])


def test_seed_report_accounts_for_every_rule_before_the_decision() -> None:
    out = text(report_of("seed-shadowed"))
    in_order(out,
             "  chain       ip filter INPUT  (in if2)",
             "  rules 1-6   no match",
             "> rule 7      -A INPUT -j REJECT --reject-with icmp-host-prohibited  -> drop  [ct new]",
             "  verdict     REJECT by ip filter INPUT rule 7: -A INPUT -j REJECT --reject-with icmp-host-prohibited")
    assert [line for line in out.splitlines() if line.startswith(">")] == [
        "> rule 7      -A INPUT -j REJECT --reject-with icmp-host-prohibited  -> drop  [ct new]"]
    in_order(out,
             "  finding     [shadowed-rule] INPUT rule 7 `-A INPUT -j REJECT --reject-with icmp-host-prohibited` rejected "
             "the packet; rule 8 `-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT` would have accepted it but is never "
             "reached, because it comes after rule 7, a catch-all for this service (appended with -A after it).",
             "  fix         iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT; then delete the unreachable copy "
             "(now rule 9): iptables -D INPUT 9")
    assert "  cleanup     instrumentation removed; what fwtrace touched equals its listing before the run " \
           "(generation 5 -> 7: only fwtrace's add and delete)" in out.splitlines()
    assert out.splitlines()[-1] == "BLOCKED 192.0.2.2 -> 192.0.2.1 tcp/8080: REJECT by filter INPUT rule 7"


def test_other_writers_are_reported_not_hidden() -> None:
    out = text(report_of("seed-shadowed", (5, 7, 9)))
    assert "  cleanup     instrumentation removed; what fwtrace touched equals its listing before the run " \
           "(generation 5 -> 9: other writers committed during the run)" in out.splitlines()


def test_user_chain_and_forward_reports() -> None:
    out = text(report_of("seed-user-chain", dport=22))
    in_order(out,
             "  chain       ip filter INPUT  (in if2)",
             "  rule 1      -A INPUT -p tcp -m tcp --dport 22 -j fail2ban-SSH  -> jump fail2ban-SSH  [ct new]",
             "  chain       ip filter fail2ban-SSH  [fail2ban (jail SSH)]",
             "  rule 1      no match",  # rule 1 of the user chain, not of INPUT
             "> rule 2      -A fail2ban-SSH -s 192.0.2.2/32 -j REJECT --reject-with icmp-port-unreachable  -> drop",
             "  verdict     REJECT by ip filter fail2ban-SSH rule 2: -A fail2ban-SSH -s 192.0.2.2/32 -j REJECT "
             "--reject-with icmp-port-unreachable")
    fwd = text(report_of("dnat-forward-drop"))
    in_order(fwd,
             "  path        prerouting -> forward",
             "  chain       ip nat PREROUTING  (in if2)",
             "  rule 1      -A PREROUTING -d 192.0.2.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination "
             "198.51.100.2:80  -> accept  [ct new]",
             "  chain       ip filter FORWARD",
             "> policy      DROP",
             "  verdict     DROP by ip filter FORWARD: policy DROP")
    assert "  finding     [forwarded] The packet was DNATed to 198.51.100.2:80 by nat PREROUTING rule 1" in fwd
    assert "  fix         iptables -A FORWARD -d 198.51.100.2 -p tcp --dport 80 -j ACCEPT" in fwd.splitlines()


def test_a_rewritten_destination_is_said_where_the_trace_shows_it() -> None:
    """After DNAT the next step's packet carries the new address, and the timeline says so. This
    kernel's trace gives the FORWARD policy event no packet header (the captured bundle shows no
    new address), so the header the kernel would give is put on that step here."""
    from scapy.layers.inet import IP, TCP

    rep = report_of("dnat-forward-drop")
    r = rep.results[0]
    fwd = r.steps[1]
    assert fwd.event.chain == "FORWARD" and not fwd.event.packet
    hdr = bytes(IP(src="192.0.2.2", dst="198.51.100.2") / TCP(sport=50175, dport=80, flags="S"))
    step = dataclasses.replace(fwd, event=dataclasses.replace(fwd.event, packet=hdr))
    rep = dataclasses.replace(rep, results=(dataclasses.replace(r, steps=(r.steps[0], step)),))
    in_order(text(rep),
             "  chain       ip filter FORWARD",
             "              (packet now addressed to 198.51.100.2:80)",
             "> policy      DROP")


def test_conntrack_state_says_where_it_was_read() -> None:
    """Traces without a conntrack state at each step (before Linux 6.16): the state shown was read
    from the table after the probe, and the report must say so; with [ct ...] on the steps it need not."""
    untraced = report_of("ipv6-tcp-reset")
    assert not any(s.event.ct_state for r in untraced.results for s in r.steps)
    rep = dataclasses.replace(untraced, results=(dataclasses.replace(untraced.results[0], conntrack="SYN_RECV"),))
    assert "  conntrack   SYN_RECV  (read from the conntrack table after the probe: this kernel's trace events carry " \
           "no conntrack state)" in text(rep).splitlines()
    traced = report_of("seed-shadowed")
    rep = dataclasses.replace(traced, results=(dataclasses.replace(traced.results[0], conntrack="SYN_RECV"),))
    assert "  conntrack   SYN_RECV" in text(rep).splitlines()


def test_log_rules_of_iptables_nft_count_in_the_generation_proof() -> None:
    files = read_bundle(str(BUNDLES / "nft-user-chain-nflog"))
    results = tuple(replay(files))
    base = build_report(ProbeRequest(dport=22, netns="srv", from_netns="cli", log="nflog"), "0badc0de", results,
                        bare(files), generations=(5, 6, 15), own_commits=8, unchanged=True)
    assert base.ruleset_unchanged is True and base.other_writers is False
    out = text(base)
    assert "  cleanup     instrumentation removed; what fwtrace touched equals its listing before the run " \
           "(generation 5 -> 15: only fwtrace's add, its 4 --log rule(s) in and out, and its delete)" in out.splitlines()
    in_order(out,
             "  chain       ip filter fail2ban-SSH  [fail2ban (jail SSH)]  (in if2)",
             '  nflog       "fwtrace:3a5e534c:4" (fwtrace\'s NFLOG rule, read over netlink)',
             "  rule 1      no match",
             "> rule 2      -A fail2ban-SSH -s 192.0.2.2/32 -j REJECT --reject-with icmp-port-unreachable  -> drop")
    other = build_report(base.request, "0badc0de", results, bare(files), generations=(5, 6, 16), own_commits=8,
                         unchanged=True)
    # The generations detect other writers; whether the ruleset is as before is the content proof's to say.
    assert other.other_writers is True and other.ruleset_unchanged is True
    assert "(generation 5 -> 16: other writers committed during the run)" in text(other)


def test_a_leftover_is_named_with_its_remedy() -> None:
    files = read_bundle(str(BUNDLES / "nft-user-chain-nflog"))
    left = ("chain ip filter FORWARD: left behind (remedy: `ip netns exec srv nft delete chain ip filter FORWARD`)",)
    req = ProbeRequest(dport=22, netns="srv", from_netns="cli", log="nflog")
    rep = build_report(req, "0badc0de", tuple(replay(files)), bare(files), leftover=left, generations=(5, 6, 9),
                       own_commits=2, unchanged=False)
    in_order(text(rep),
             "  cleanup     FAILED, not as before the run:",
             "              chain ip filter FORWARD: left behind (remedy: `ip netns exec srv nft delete chain ip filter "
             "FORWARD`)",
             "",
             "BLOCKED 192.0.2.2 -> 192.0.2.1 tcp/22: REJECT by filter fail2ban-SSH rule 2")
    assert "instrumentation removed" not in text(rep)
    doc = rep.to_json()["cleanup"]
    assert doc["ok"] is False and doc["ruleset_unchanged"] is False and doc["leftover"] == list(left)
    assert exit_status(rep) == ExitStatus.LEFTOVER == 5
    # Two leftovers, each on its own row; somebody else committed meanwhile: they may be theirs, and the report says so.
    two = left + ("chain ip filter OUTPUT: left behind (remedy: `ip netns exec srv nft delete chain ip filter OUTPUT`)",)
    theirs = build_report(req, "0badc0de", tuple(replay(files)), bare(files), leftover=two, generations=(5, 6, 12),
                          own_commits=2, unchanged=False)
    in_order(text(theirs),
             "  cleanup     FAILED, not as before the run:",
             "              chain ip filter FORWARD: left behind (remedy: `ip netns exec srv nft delete chain ip filter "
             "FORWARD`)",
             "              chain ip filter OUTPUT: left behind (remedy: `ip netns exec srv nft delete chain ip filter "
             "OUTPUT`)",
             "              (generation 5 -> 12: other writers committed during the run: some of these may be theirs)")
    md = markdown.render(theirs, {}, "fwtrace probe")
    assert "- **cleanup:** FAILED, not as before the run:\n  - chain ip filter FORWARD: left behind" in md
    assert "\n  - chain ip filter OUTPUT: left behind" in md


def test_legacy_report_marks_legacy_chains_and_the_listing_proof() -> None:
    files = read_bundle(str(BUNDLES / "legacy-user-chain-log"))
    results = tuple(replay(files))
    rep = build_report(ProbeRequest(dport=22, netns="srv", from_netns="cli", log="kmsg"), "0badc0de", results,
                       bare(files), generations=(5, 6, 7), legacy_unchanged=True, unchanged=True,
                       checked=("the table list (handles, flags, chain and set counts)", "the iptables-legacy tables"))
    out = text(rep)
    in_order(out,
             "  chain       ip filter INPUT [legacy]  (in eth0)",
             '  log         "fwtrace:5b2204b7:1" (fwtrace\'s LOG rule; also in dmesg)',
             "  rule 1      -A INPUT -p tcp -m tcp --dport 22 -j fail2ban-SSH  -> jump fail2ban-SSH",
             "  chain       ip filter fail2ban-SSH [legacy]  [fail2ban (jail SSH)]  (in eth0)",
             '  log         "fwtrace:5b2204b7:4" (fwtrace\'s LOG rule; also in dmesg)',
             "  rule 1      no match",
             "> rule 2      -A fail2ban-SSH -s 192.0.2.2/32 -j REJECT --reject-with icmp-port-unreachable  -> drop",
             "  verdict     REJECT by ip filter fail2ban-SSH (iptables-legacy) rule 2: -A fail2ban-SSH -s 192.0.2.2/32 "
             "-j REJECT --reject-with icmp-port-unreachable")
    assert "iptables-legacy -I fail2ban-SSH 2 -s 192.0.2.2/32 -p tcp --dport 22 -j ACCEPT" in out  # the raw fix
    assert "  cleanup     instrumentation removed; what fwtrace touched equals its listing before the run " \
           "(the table list (handles, flags, chain and set counts), the iptables-legacy tables; generation 5 -> 7: " \
           "only fwtrace's add and delete)" in out.splitlines()
    assert rep.to_json()["cleanup"]["legacy_unchanged"] is True


def test_hooks_name_base_chains_and_the_chain_the_deciding_rule_is_in() -> None:
    """hooks[] lists base chains only: a REJECT in fail2ban-SSH, jumped to from INPUT, ends INPUT's walk."""
    for name in ("seed-user-chain", "legacy-user-chain-log"):
        [r] = report_of(name).results
        [h] = [h.to_json() for h in r.hooks]
        assert (h["chain"], h["hook"], h["rule_chain"], h["rule_number"]) == ("INPUT", "input", "fail2ban-SSH", 2)

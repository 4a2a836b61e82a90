"""The `fwtrace` command: parse arguments into frozen values, dispatch, turn errors into messages."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any, Callable, Optional, Sequence

from tracer import __version__
from tracer.cli import cliargs, logs
from tracer.system import console
from tracer.cli.cliargs import check_evidence_path, probe_request  # (also for the tests, as cli.probe_request)
from tracer.errors import EnvironmentProblem, ExitStatus, FwtraceError, Interrupted, UsageError
from tracer.model import Proto

EPILOG_PROBE = """\
examples:
  fwtrace probe --dport 8080 --src 203.0.113.5
        why can't customer 203.0.113.5 reach port 8080 of this machine? The probe is received on
        the interface of the route back to 203.0.113.5 (or --via IFACE) as if it came from there;
        its reply is caught before it leaves the machine.
  fwtrace probe --dport 8080 --netns srv --from-netns client
        probe from a real second host: namespace client, on a link to the host in namespace srv
  fwtrace probe --dport 8080 --local
        send from the machine itself (OUTPUT -> lo -> INPUT); rules on eth0 are not exercised
  fwtrace probe --dport 53 --proto udp --dst 192.0.2.1 --via eth1
  fwtrace probe --dport 53 --proto both --dst 192.0.2.1   (DNS: tcp and udp in one run)
  fwtrace probe --proto icmp --dst 2001:db8::1 --json
  fwtrace probe --dport 443 --flags A     (a stray ACK: what does conntrack/the firewall do?)
  fwtrace probe --dport 8080 --prove-fix  (blocked? try the fix for this probe alone, and say if it is enough)
  fwtrace probe --dport 22 --log          (also log the probe in every iptables chain it enters)
  fwtrace probe --dport 22 --log kmsg     (... with LOG rules, as dmesg shows them)
  fwtrace probe --dport 8080 --ebpf on    (the kernel's drop reason from the start: rp_filter, no socket,
                                         a full accept queue, a netfilter drop outside the traced chains)

"reached" means the service's answer came back out through the firewall: a SYN-ACK for a SYN,
a RST for a stray ACK/FIN to a listening port, a UDP reply (or, for UDP, silence and no ICMP
error: the text says which), an echo reply for ICMP. A reply dropped on its way out (OUTPUT,
POSTROUTING) is not reached. With --count N every packet must have reached.

  fwtrace probe --dport 8080 --evidence ticket-4711.tar.gz --redact
        also write the evidence for a ticket: report.md/.html/.json, probe.pcapng, path.svg,
        rulesets before and after with counters, environment; other addresses made placeholders

fwtrace's own options (-v/-vv, --log-format, --traceback: see `fwtrace --help`) may also be
given here, after `probe`.

exit status:
  0    the probe reached the service
  1    blocked, no listener, or unanswered (or the reply was dropped)
  2    usage error (bad option or value)
  3    environment problem (not root, missing tool, unknown namespace, the report or the
       evidence bundle could not be written: the report is printed first, no partial bundle)
  4    internal error (a bug: rerun with --traceback and report it)
  5    cleanup incomplete (the report names what is left and the command that removes it)
  130  interrupted (SIGINT, SIGTERM, SIGHUP; changes undone)
"""
PROBE_USAGE = """fwtrace probe --dport PORT [--proto tcp|udp|both] [options]   (--dport is required for tcp and udp)
       fwtrace probe --proto icmp [options]"""
# Options that take a number: a negative value would otherwise be read as an option of its own
# (argparse knows -6) and refused as "expected one argument" instead of by its range check.
NUMERIC_OPTIONS = ("--dport", "--sport", "--count", "--timeout", "--duration", "--max-packets")

EPILOG_CLEANUP = """\
With --netns NS: replays the journals of the dead runs that probed NS only, then removes
fwtrace tables of dead runs in NS. Without --netns: replays the journals of ALL dead runs,
whatever namespace they probed, then removes fwtrace tables of dead runs in the current namespace.
Runs still alive are never touched. Exit status 0 when everything was undone; 5 when an undo
failed (its journal is kept for the next try, and one line names it); 3 not root.
Also deletes the shadow namespaces (fwtrace-shadow<pid>-...) of dead what-if/replay runs.
"""

class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors reach the one place that reports them."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fwtrace", description="Why is my port closed? Trace probe packets through netfilter.",
                epilog="-v/-vv, --log-format and --traceback may also follow the subcommand (fwtrace probe ... -v).")
    _global_options(p)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    # One function per subcommand, called in the order --help lists them.
    _add_probe(sub)
    _add_watch(sub)
    _add_demo(sub)
    _add_doctor(sub)
    _add_cleanup(sub)
    _add_whatif(sub)
    _add_replay(sub)
    return p


def _global_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"fwtrace {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: log fwtrace's own changes and their undos on stderr; -vv: also every raw trace event "
                   "(default: warnings and errors only)")
    p.add_argument("--no-color", action="store_true", help="no colour in the report (also: NO_COLOR set in the environment)")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="format of fwtrace's own log on stderr")
    p.add_argument("--traceback", action="store_true", help="show the Python traceback of unexpected errors")


def _add_probe(sub: Any) -> None:
    pr = sub.add_parser("probe", help="send probe packets and explain their verdict", epilog=EPILOG_PROBE,
                        formatter_class=argparse.RawDescriptionHelpFormatter, usage=PROBE_USAGE)
    # --help lists the options in the order they are added: keep these calls in this order.
    _probe_packet_options(pr)
    _probe_sending_options(pr)
    _probe_run_options(pr)
    _probe_output_options(pr)


def _probe_packet_options(pr: argparse.ArgumentParser) -> None:
    """What the probe packets are."""
    pr.add_argument("--dport", type=cliargs.port, metavar="PORT", help="destination port, 1-65535: REQUIRED for tcp and udp")
    pr.add_argument("--proto", choices=[x.value for x in Proto] + ["both"], default="tcp",
                    help="protocol (default tcp; icmp sends an echo request; both: tcp and udp to the same port in one "
                    "run, as DNS needs)")
    pr.add_argument("--flags", help="TCP flags in letters, e.g. S, A, SA, F, R, PA (default S)")
    pr.add_argument("--dst", type=cliargs.address, help="destination address (default: an address of the interface the probe arrives "
                    "on, else the target namespace's first global address)")
    pr.add_argument("--src", type=cliargs.address, help="source address (default: 203.0.113.5 / 2001:db8:ffff::5 for a simulated "
                    "remote client; the sender's own address with --local or --from-netns)")
    pr.add_argument("--sport", type=cliargs.port, help="source port, 1-65535 (default: random per run)")
    pr.add_argument("--count", type=cliargs.count, default=1, help="number of probe packets, 1-100 (default 1)")


def _probe_sending_options(pr: argparse.ArgumentParser) -> None:
    """Which host is probed, and from where the probes come."""
    pr.add_argument("--netns", help="network namespace of the host under diagnosis (default: the current one)")
    pr.add_argument("--via", metavar="IFACE", help="simulated ingress: the interface the probe arrives on "
                    "(default: the one the route back to --src leaves by)")
    pr.add_argument("--local", action="store_true", help="send from the target namespace itself instead of "
                    "simulating a remote client (the packet takes OUTPUT -> lo -> INPUT)")
    pr.add_argument("--from-netns", help="send from this namespace, a real remote client on a link "
                    "(default: simulate one arriving on --via)")


def _probe_run_options(pr: argparse.ArgumentParser) -> None:
    """How the run watches the kernel and waits."""
    pr.add_argument("--print-bpf", action="store_true", help="print the generated BPF programs on stderr (the tc programs "
                    "of simulated ingress, the eBPF probes as rendered for this kernel)")
    pr.add_argument("--ebpf", choices=("auto", "on", "off"), default="auto",
                    help="the kernel's own drop reasons and replies through eBPF (bcc): auto (default) probes again with "
                    "them when the first pass leaves a packet's fate unexplained; on: from the start; off: never")
    pr.add_argument("--timeout", type=cliargs.timeout, default=1.0, help="seconds to wait for a reply per packet, more "
                    "than 0 and at most 60 (default 1)")
    pr.add_argument("-6", "--ipv6", action="store_true", help="pick IPv6 addresses when --dst is not given")


def _probe_output_options(pr: argparse.ArgumentParser) -> None:
    """What the run writes, and what it does besides probing (logging rules, the fix proof, evidence)."""
    pr.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    pr.add_argument("--log", nargs="?", const="nflog", choices=("nflog", "kmsg"), default="",
                    help="also log the probes with temporary rate-limited rules at the top of every iptables chain "
                    "of their family: NFLOG read over netlink (default; nothing in dmesg) or `--log kmsg`: LOG "
                    "rules, as dmesg shows them (in a namespace this sets the global nf_log_all_netns for the run)")
    pr.add_argument("--prove-fix", action="store_true", help="when blocked, try the first fix, narrowed to the "
                    "probe's own source address and port (no other packet's verdict can change), probe again and "
                    "remove it; if another block follows, try its fix on top (up to 3 steps)")
    pr.add_argument("--evidence", metavar="DIR|FILE.tar.gz", help="write an evidence bundle for a ticket into DIR, or "
                    "as one FILE.tar.gz to attach: report.md/.html/.json, probe.pcapng, path.svg, the rulesets before "
                    "and after with counters and their deltas, the environment, the raw trace for replay; DIR must be "
                    "new or empty, a .tar.gz must not exist: checked before anything is changed, nothing is ever "
                    "overwritten; held by this run, so another run given the same path is refused")
    pr.add_argument("--redact", action="store_true", help="in the evidence bundle, replace addresses other than the "
                    "probe's by stable placeholders")
    pr.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                    help="no colour in the report (also when NO_COLOR is set, or stdout is not a terminal)")


EPILOG_WATCH = """\
examples:
  fwtrace watch --src 203.0.113.5 --dport 8080 --duration 30s
        do customer 203.0.113.5's packets to port 8080 even arrive, and what does the firewall do
        with them? One row per flow, updated as verdicts arrive; Ctrl-C ends early and summarises.
  fwtrace watch --netns srv --dport 53 --proto udp --max-packets 100 --json

Temporary instrumentation matching only the filter, rate-limited in the kernel (a flood cannot
flood fwtrace: beyond the budget packets are counted, not traced), journaled and removed at the
end with the same cleanup proof as probe. A capture on the receive side (AF_PACKET with a BPF
filter, before tc and netfilter) tells "arrived on eth0 but never reached netfilter" from
"nothing arrived" (outside this host's reach), and a wrong filter from both.
The duration is capped at 1h; --all is needed to watch without --src, --dport or --proto.

exit status:
  0    every flow seen got through netfilter
  1    a flow was blocked, or nothing of the filter arrived
  2    usage error (bad option or value, unknown interface)
  3    environment problem (not root, missing tool, unknown namespace)
  5    cleanup incomplete
  130  interrupted before the watch began collecting (changes undone)
"""


def _add_watch(sub: Any) -> None:
    wa = sub.add_parser("watch", help="trace the real client's traffic for a bounded time: per-flow verdicts, "
                        "or proof that nothing arrived", epilog=EPILOG_WATCH,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    wa.add_argument("--netns", metavar="NS", help="watch in this network namespace (default: the current one)")
    wa.add_argument("--src", type=cliargs.network, metavar="ADDR|PREFIX", help="the client's address or prefix")
    wa.add_argument("--dport", type=cliargs.port, metavar="PORT", help="the service's port (tcp and udp)")
    wa.add_argument("--proto", choices=[p.value for p in Proto], help="only this protocol")
    wa.add_argument("--iface", metavar="IF", help="capture arrivals on this interface only (default: all)")
    wa.add_argument("--duration", type=cliargs.duration, default=30.0, metavar="30s",
                    help="how long to watch: 30s, 2m (more than 0, at most 1h; default 30s)")
    wa.add_argument("--max-packets", type=cliargs.max_packets, metavar="N", help="stop after N packets of the filter")
    wa.add_argument("--packets", action="store_true", help="list every traced packet of a flow, not only the roll-up")
    wa.add_argument("--all", action="store_true", help="allow a filter that matches everything (rate-limited still)")
    wa.add_argument("--json", action="store_true", help="ndjson: one object per flow event, then a summary object")
    wa.add_argument("--evidence", metavar="DIR|FILE.tar.gz", help="also write the watched packets (pcapng, trace id "
                    "per packet in a comment) and the flows table with timelines")


def cmd_watch(ns: argparse.Namespace, log: Any) -> int:
    req = cliargs.watch_request(ns)
    check_evidence_path(ns.evidence)
    from tracer.pipeline.watchrun import WatchRun
    from tracer.render import watchview
    from tracer.report import watch as wreport

    view = watchview.View(sys.stdout, ns.json, sys.stdout.isatty(), False if ns.no_color else None)
    run = WatchRun(req, log, on_show=view.show)
    try:
        summary = run.execute_watch()
    except KeyboardInterrupt as e:
        view.stop()
        raise Interrupted(getattr(e, "signame", "SIGINT"), run.undo_errors, req.netns, run=True) from None
    finally:
        view.stop()
    written = console.write_out(watchview.summary_json(summary) if ns.json else watchview.summary_text(summary))
    if ns.evidence:
        from tracer.system import bundle_io

        files = watchview.evidence_files(summary, list(sys.argv if ns.argv is None else ns.argv))
        if ns.evidence.endswith(".tar.gz"):
            bundle_io.write_tar(ns.evidence, files, f"fwtrace-watch-{summary.run_id}")
        else:
            bundle_io.write_dir(ns.evidence, files)
        log.info("evidence written", path=ns.evidence)
    if not summary.cleanup_ok:
        console.say("fwtrace: error: cleanup incomplete, not as before the run: " + "; ".join(summary.leftover))
    elif written is not None:
        raise EnvironmentProblem(f"could not write the summary to stdout: {written}", "check where stdout goes")
    return int(wreport.exit_status(summary))


def _add_demo(sub: Any) -> None:
    de = sub.add_parser("demo", help="build a two-namespace lab with the classic shadowed-rule firewall, probe it as a simulated customer, apply the fix, probe from a real second host, tear it down")
    de.add_argument("--json", action="store_true", help="print one JSON document instead of the text: {demo, exit_status "
                    "(the demo's own), probes[] (each probe's document, as `fwtrace probe --json` prints it, with its "
                    "command), applied[] (the fix commands run in the lab between them)}")
    de.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_doctor(sub: Any) -> None:
    dr = sub.add_parser("doctor", help="say what this machine supports (nftrace, nf_log, BTF, tracefs, kprobes, fentry, "
                        "bcc and headers, drop reasons) and what fwtrace will therefore do; exit 0 when probing works")
    dr.add_argument("--json", action="store_true", help="print the facts as one JSON document")
    dr.add_argument("--no-load", action="store_true", help="do not compile and load the eBPF programs to prove they work")


def _add_cleanup(sub: Any) -> None:
    cl = sub.add_parser("cleanup", help="remove instrumentation left by fwtrace runs whose process is gone",
                        epilog=EPILOG_CLEANUP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cl.add_argument("--netns", help="undo only the dead runs that probed this namespace, and remove stale fwtrace "
                    "tables there (default: every dead run's changes, and stale tables of the current namespace)")


EPILOG_WHATIF = """\
examples:
  fwtrace what-if --dport 8443 -- iptables -I INPUT 1 -p tcp --dport 8443 -j ACCEPT
        who else gets in on 8443 if I run this? (a banned range? another zone?)
  fwtrace what-if --dport 22 --src 198.51.100.7 -- iptables -D INPUT 3
  fwtrace what-if --netns srv --from-netns cli --dport 8080 -- nft add rule inet filter input tcp dport 8080 accept
  fwtrace what-if --bundle ticket-4711.tar.gz --dport 8080 -- iptables -I INPUT 1 -p tcp --dport 8080 -j ACCEPT
        the same on a ticket's firewall, rebuilt from its evidence bundle on this machine

The command runs in a shadow: a throwaway namespace with a copy of the target's rulesets (nft,
iptables-nft, iptables-legacy), ipsets, xt_recent entries, addresses, routes, the sysctls that
decide packets and a stand-in listener on each listening port. The shadow is probed before and
after (simulated ingress) from the client (--src, or --from-netns's address), one address of
every source range, set and xt_recent list the ruleset names, and an internet address, on --dport
and the ports the command names, and from the client on the other listening ports. The host is
only read. ufw/firewall-cmd commands are refused (give the iptables/nft commands they produce).

exit status:
  0    the command ran in the shadow; the table says who gains and who loses
  2    not a firewall command (iptables, ip6tables, nft, ipset, sysctl -w net.*), or a bad option
  3    the shadow cannot be built (not root, no namespaces, the ruleset does not load)
  6    the command failed inside the shadow (it would fail on the host too)
"""

EPILOG_REPLAY = """\
examples:
  fwtrace replay ticket-4711.tar.gz
  fwtrace replay tests/data/bundles/seed-shadowed --json

Rebuilds the firewall of an evidence bundle (`fwtrace probe --evidence`) in a shadow namespace on
this machine (no access to the original host, no ufw/firewalld needed) and runs the bundle's probe
again; says whether verdict, deciding rule and reply match, and what the bundle did not carry.

exit status:
  0    verdict, deciding rule and reply match the bundle's
  1    they differ (the lines marked DIFF)
  3    the shadow cannot be built
  7    not an fwtrace bundle, or one from a newer fwtrace
"""


def _add_whatif(sub: Any) -> None:
    wi = sub.add_parser("what-if", help="run an iptables/nft/ipset/sysctl command in a shadow copy of the firewall and "
                        "show who gains and who loses access (the host is not changed)", epilog=EPILOG_WHATIF,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        usage="fwtrace what-if --dport PORT [--proto tcp|udp] [target options] [--json] -- CMD...")
    wi.add_argument("--dport", type=cliargs.port, metavar="PORT", required=True, help="the port the probes go to (also: the ports the command names)")
    wi.add_argument("--proto", choices=("tcp", "udp"), default="tcp", help="protocol (default tcp)")
    wi.add_argument("--dst", type=cliargs.address, help="the target's address to probe (default: its first global address)")
    wi.add_argument("--src", type=cliargs.address, help="the client (default: --from-netns's address, else 203.0.113.5)")
    wi.add_argument("--netns", help="the namespace whose firewall is copied (default: the current one; only read)")
    wi.add_argument("--from-netns", help="the client's namespace: its address is the client (only read)")
    wi.add_argument("-6", "--ipv6", action="store_true", help="pick IPv6 addresses when --dst is not given")
    wi.add_argument("--bundle", metavar="BUNDLE.tar.gz|DIR", help="copy the firewall of an evidence bundle (a ticket's) "
                    "instead of --netns: what-if on another machine's firewall")
    wi.add_argument("--timeout", type=cliargs.timeout, default=0.5, help="seconds to wait for a reply per probe (default 0.5)")
    wi.add_argument("--json", action="store_true", help="print one JSON document ({\"whatif\": {\"changes\": [...]}})")
    wi.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command, after --")


def _add_replay(sub: Any) -> None:
    rp = sub.add_parser("replay", help="rebuild an evidence bundle's firewall in a shadow namespace and run its probe again",
                        epilog=EPILOG_REPLAY, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("bundle", metavar="BUNDLE.tar.gz|DIR", help="what `fwtrace probe --evidence` wrote")
    rp.add_argument("--timeout", type=cliargs.timeout, default=1.0, help="seconds to wait for a reply (default 1)")
    rp.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_whatif(ns: argparse.Namespace, log: Any) -> int:
    from tracer.model import ProbeRequest
    from tracer.plan import shadow as shadow_plan

    argv = list(ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd)
    shadow_plan.check_command(argv)  # before anything is read or built
    from tracer import system

    system.require_root()
    from tracer.pipeline import whatif

    req = ProbeRequest(dport=ns.dport, proto=Proto(ns.proto), dst=ns.dst, src=ns.src, netns=ns.netns,
                       from_netns=ns.from_netns, ipv6=ns.ipv6, timeout=ns.timeout)
    if ns.netns is not None:
        system.netns_path(ns.netns)  # unknown namespace: exit 3 before the shadow is built
    if ns.bundle is not None:
        whatif.check_bundle(whatif.read_bundle(ns.bundle), ns.bundle)  # exit 7 before the shadow is built
    result = whatif.what_if(req, argv, log, bundle=ns.bundle)
    out = json.dumps({"whatif": result.to_json()}, indent=2) + "\n" if ns.json else shadow_plan.render(result)
    if console.write_out(out) is not None:
        return ExitStatus.ENVIRONMENT
    return ExitStatus.LEFTOVER if result.shadow_left else ExitStatus.OK


def cmd_replay(ns: argparse.Namespace, log: Any) -> int:
    from tracer import system
    from tracer.pipeline import whatif

    files = whatif.read_bundle(ns.bundle)
    whatif.check_bundle(files, ns.bundle)  # a bad bundle: exit 7 before root is asked for
    system.require_root()
    result = whatif.replay(ns.bundle, log, timeout=ns.timeout)
    out = json.dumps({"replay": result.to_json()}, indent=2) + "\n" if ns.json else whatif.render_replay(result)
    if console.write_out(out) is not None:
        return ExitStatus.ENVIRONMENT
    return ExitStatus.OK if result.matches else ExitStatus.BLOCKED


def cmd_probe(ns: argparse.Namespace, log: Any) -> int:
    req = probe_request(ns)  # validated before anything heavier is imported or touched
    check_evidence_path(ns.evidence)
    held: Any = None
    if ns.evidence:
        from tracer.pipeline import bundle as bundle_mod

        held = bundle_mod.Reservation(ns.evidence)  # this run's alone until written (or given up)
    try:
        return _probe(ns, log, req, held)
    finally:
        if held is not None:
            held.release()  # not written (an error, an interrupt): the path as it was


def _probe(ns: argparse.Namespace, log: Any, req: Any, held: Any) -> int:
    # scapy's import is most of a probe's time; let it run while the snapshot waits for nft.
    threading.Thread(target=_import_scapy, args=(req.ipv6,), daemon=True).start()

    from tracer.report import outcome as run_outcome
    from tracer.pipeline.driver import Run
    from tracer.render import jsondoc

    bundle: Any = None
    if held is not None:
        from tracer.pipeline import bundle as bundle_mod

        bundle = bundle_mod.Collector(req, list(sys.argv if ns.argv is None else ns.argv))
        bundle.before()
    from tracer.render.progress import around

    what = f"{'tcp+udp' if req.both else req.proto.value}/{req.dport}" if req.proto is not Proto.ICMP else "ping"
    with around(log, not ns.verbose and ns.log_format == "console", req.count, what, req.timeout) as plog:
        run = Run(req, plog, log_events=ns.verbose >= 2, full_snapshot=held is not None)
        try:
            report = run.execute()
        except KeyboardInterrupt as e:
            if isinstance(e, Interrupted) and e.run:
                raise  # from a run of its own (--ebpf auto's second pass), with its undo's result
            raise Interrupted(getattr(e, "signame", "SIGINT"), run.undo_errors, req.netns, run=True) from None
    from tracer.pipeline import cmdcheck

    report = cmdcheck.check(report, req.netns)  # every fix command it prints, run by its tool on a copy
    steps: tuple[Any, ...] = ()
    if ns.prove_fix:
        from tracer.pipeline import provefix

        report, steps = provefix.prove(report, log, provefix.runner(log))
    if ns.json:
        doc = jsondoc.document(report)
        out = json.dumps(provefix.to_json(doc, steps) if ns.prove_fix else doc, indent=2) + "\n"
    else:
        from tracer.render import terminal  # rich: only for the text report

        out = terminal.for_stream(report, sys.stdout, ns.no_color)
        if ns.prove_fix:
            out += provefix.render(steps, report.reached)
    written = console.write_out(out)  # the report first: a full disk for the bundle leaves it intact
    evidence: Optional[EnvironmentProblem] = None
    if bundle is not None:
        try:
            where = bundle.write(report, held, redact=ns.redact)
            log.info("evidence written", path=where)
        except EnvironmentProblem as e:
            evidence = e
    status = int(run_outcome.exit_status(report))
    if not report.cleanup_ok:
        if evidence is not None:
            console.say(f"fwtrace: error: {evidence}")
        console.say("fwtrace: error: cleanup incomplete, not as before the run: " + "; ".join(report.leftover))
    elif evidence is not None:
        raise evidence
    elif written is not None:
        raise EnvironmentProblem(f"could not write the report to stdout: {written}", "check where stdout goes")
    return status


def cmd_demo(ns: argparse.Namespace, log: Any) -> int:
    from tracer.cli import lab

    return lab.demo(log, as_json=ns.json, color=False if ns.no_color else None)


def cmd_doctor(ns: argparse.Namespace, log: Any) -> int:
    from tracer.pipeline import doctor

    facts = doctor.gather(load=not ns.no_load)
    sys.stdout.write(doctor.dumps(facts) + "\n" if ns.json else doctor.render(facts))
    return ExitStatus.OK if doctor.verdict(facts) else ExitStatus.ENVIRONMENT


def cmd_cleanup(ns: argparse.Namespace, log: Any) -> int:
    from tracer.system import cleanup

    kept: list[str] = []
    removed = cleanup.clean_stale(ns.netns, log, kept)
    scope = f"that probed {ns.netns}" if ns.netns else "(all namespaces)"
    written = console.write_out(f"undid {len(removed)} change(s) left by dead fwtrace runs {scope}"
                                + (": " + "; ".join(removed) if removed else "") + "\n")
    if kept:  # never 0 with a journal left: the next run would warn about it again
        console.say("fwtrace: error: cleanup incomplete: " + " | ".join(kept)
                    + " (hint: undo what it names by hand, then delete the journal)")
        return ExitStatus.LEFTOVER
    return ExitStatus.ENVIRONMENT if written is not None else ExitStatus.OK


def _import_scapy(ipv6: bool) -> None:
    from tracer.system.raw import preload_scapy

    preload_scapy(ipv6)


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "probe": cmd_probe,
    "watch": cmd_watch,
    "demo": cmd_demo,
    "cleanup": cmd_cleanup,
    "doctor": cmd_doctor,
    "what-if": cmd_whatif,
    "replay": cmd_replay,
}


def _interrupted_line(e: KeyboardInterrupt) -> str:
    name = getattr(e, "signame", None) or "SIGINT"
    errors = getattr(e, "undo_errors", None)
    netns = getattr(e, "netns", None)
    if not getattr(e, "run", False):
        return f"fwtrace: interrupted ({name})"
    if errors is None:
        return f"fwtrace: interrupted ({name}) before the run changed anything"
    if not errors:
        return f"fwtrace: interrupted ({name}); every change of the run was undone"
    return (f"fwtrace: interrupted ({name}); could not undo: {'; '.join(errors)} "
            f"(hint: run `fwtrace cleanup{f' --netns {netns}' if netns else ''}`)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    console.std_streams()
    parser = build_parser()
    ns: Optional[argparse.Namespace] = None
    try:
        with console.interrupts():
            try:
                args = list(sys.argv[1:] if argv is None else argv)
                cut = args.index("--") if "--" in args else len(args)  # what-if's command stays as given
                ns = parser.parse_args(_join_negative_numbers(_globals_first(args[:cut])) + args[cut:])
                ns.argv = None if argv is None else ["fwtrace", *args]
                if ns.command is None:
                    parser.print_help()
                    return ExitStatus.USAGE
                log = logs.configure_logging(ns.log_format, ns.verbose)
                status = int(COMMANDS[ns.command](ns, log))
                if ns.command != "probe":  # a probe acts on it while it runs, and reports once it is over
                    console.check()  # a signal no safe point of the command acted on (doctor, cleanup)
                return status
            except FwtraceError as e:
                console.say(f"fwtrace: error: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""))
                return int(e.status)
            except KeyboardInterrupt as e:
                console.say(_interrupted_line(e))
                return int(ExitStatus.INTERRUPTED)
            except Exception as e:
                if ns is not None and ns.traceback:
                    raise
                console.say(f"fwtrace: internal error: {type(e).__name__}: {e} (rerun with --traceback and report it)")
                return int(ExitStatus.INTERNAL)
    except KeyboardInterrupt as e:  # arrived while the first one was reported: still one line
        console.say(_interrupted_line(e))
        return int(ExitStatus.INTERRUPTED)
    finally:
        console.settle_streams()


_GLOBAL_FLAGS = ("-v", "--verbose", "--traceback")
_GLOBAL_VALUED = ("--log-format",)


def _globals_first(args: list[str]) -> list[str]:
    """`fwtrace probe ... -v` as `fwtrace -v probe ...`: the global options (-v/-vv, --log-format,
    --traceback) are taken after the subcommand too, moved before it for argparse. Nothing after
    `--` moves, and an option's value stays with its option."""
    i = 0
    while i < len(args) and args[i].startswith("-"):  # global options before the subcommand
        i += 2 if args[i] in _GLOBAL_VALUED else 1
    if i >= len(args) or args[i] not in COMMANDS:
        return args
    head, rest = args[: i + 1], args[i + 1 :]
    moved: list[str] = []
    kept: list[str] = []
    j = 0
    while j < len(rest):
        a = rest[j]
        if a == "--":
            kept += rest[j:]
            break
        if a in _GLOBAL_FLAGS or (len(a) > 2 and a[0] == "-" and a[1] != "-" and set(a[1:]) == {"v"}):
            moved.append(a)
        elif a in _GLOBAL_VALUED and j + 1 < len(rest):
            moved += rest[j : j + 2]
            j += 1
        elif any(a.startswith(o + "=") for o in _GLOBAL_VALUED):
            moved.append(a)
        else:
            kept.append(a)
            if a.startswith("--") and "=" not in a and j + 1 < len(rest) and not rest[j + 1].startswith("-"):
                kept.append(rest[j + 1])  # an option's value (e.g. `--netns -v` would stay a value)
                j += 1
        j += 1
    return moved + head + kept if moved else args


def _join_negative_numbers(args: list[str]) -> list[str]:
    """`--dport -1` -> `--dport=-1`, so the value reaches its range check (see NUMERIC_OPTIONS)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if args[i] in NUMERIC_OPTIONS and nxt[:1] == "-" and (nxt[1:2].isdigit() or nxt[1:2] == "."):
            out.append(f"{args[i]}={nxt}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def run() -> None:
    console.take_signals()  # the `fwtrace` script's entry point (python -m tracer took them already)
    status = main()
    # The run is over and its status known: a signal now must not change it. The interpreter's
    # shutdown puts every Python-level handler back to SIG_DFL (a late SIGINT killed the process
    # after its report, exit -2) but leaves ignored signals ignored.
    console.ignore_signals()
    sys.exit(status)

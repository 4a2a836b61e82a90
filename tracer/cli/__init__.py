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
# Subcommands in modules of their own (issue 19: no module over 400 lines); re-exported here as before.
from tracer.cli.admin import EPILOG_CLEANUP, _add_cleanup, _add_demo, _add_doctor, cmd_cleanup, cmd_demo, cmd_doctor  # noqa: F401
from tracer.cli.shadowcmd import EPILOG_REPLAY, EPILOG_WHATIF, _add_replay, _add_whatif, cmd_replay, cmd_whatif  # noqa: F401
from tracer.cli.watchcmd import EPILOG_WATCH, _add_watch, cmd_watch  # noqa: F401
from tracer.cli.probehelp import EPILOG_PROBE

PROBE_USAGE = """fwtrace probe --dport PORT [--proto tcp|udp|both] [options]   (--dport is required for tcp and udp)
       fwtrace probe --service NAME|rpc:PROGRAM [--proto tcp|udp|both] [options]
       fwtrace probe --proto icmp [options]"""
# Options that take a number: a negative value would otherwise be read as an option of its own
# (argparse knows -6) and refused as "expected one argument" instead of by its range check.
NUMERIC_OPTIONS = ("--dport", "--sport", "--count", "--timeout", "--duration", "--max-packets")

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
    pr.add_argument("--service", metavar="NAME|rpc:PROGRAM", help="instead of --dport: the ports service NAME "
                    "really listens on (its processes and /etc/services; a disagreement is warned about), or RPC "
                    "program PROGRAM's ports as rpcbind (port 111) gives them, and 111 itself; each probed in turn")
    pr.add_argument("--proto", choices=[x.value for x in Proto] + ["both"], default=None,
                    help="protocol (default tcp, with --service both; icmp sends an echo request; both: tcp and udp to "
                    "the same port in one run, as DNS needs)")
    pr.add_argument("--flags", help="TCP flags in letters, e.g. S, A, SA, F, R, PA (default S)")
    pr.add_argument("--dst", type=cliargs.address, help="destination address (default: an address of the interface the probe arrives "
                    "on, else the target namespace's first global address)")
    pr.add_argument("--src", type=cliargs.address, help="source address (default: 203.0.113.5 / 2001:db8:ffff::5 for a simulated "
                    "remote client; the sender's own address with --local or --from-netns)")
    pr.add_argument("--sport", type=cliargs.port, help="source port, 1-65535 (default: random per run)")
    pr.add_argument("--count", type=cliargs.count, default=1, help="number of probe packets, 1-100 (default 1)")
    pr.add_argument("--app", choices=("ftp",), help="ftp: also run a real FTP control session from the client (login, "
                    "PASV, EPSV) and probe each passive data port it returns (--local or --from-netns; --dport default 21)")
    pr.add_argument("--ftp-user", default="anonymous", help="--app ftp: the login (default anonymous)")
    pr.add_argument("--ftp-password", default="fwtrace@", help="--app ftp: the password (default fwtrace@)")


def _probe_sending_options(pr: argparse.ArgumentParser) -> None:
    """Which host is probed, and from where the probes come."""
    pr.add_argument("--netns", help="network namespace of the host under diagnosis (default: the current one)")
    pr.add_argument("--via", metavar="IFACE", help="simulated ingress: the interface the probe arrives on "
                    "(default: the one the route back to --src leaves by)")
    pr.add_argument("--local", action="store_true", help="send from the target namespace itself instead of "
                    "simulating a remote client (the packet takes OUTPUT -> lo -> INPUT)")
    pr.add_argument("--from-netns", help="send from this namespace, a real remote client on a link "
                    "(default: simulate one arriving on --via)")
    pr.add_argument("--from", dest="from_url", metavar="ssh://[USER@]HOST[:PORT]",
                    help="send from a real client host over SSH (BatchMode; only python3 needed there, no root: a "
                    "plain TCP connect or UDP datagram); extra ssh options from $FWTRACE_SSH_OPTIONS")


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
    pr.add_argument("--check-fixes", action=argparse.BooleanOptionalAction, default=None,
                    help="try each suggested fix in a throwaway shadow copy of the firewall and probe a sample of "
                    "other sources and ports before and after it: the report says whom else each fix lets in "
                    "(`changes nothing else` only when checked). On by default with --evidence; the target is only read")
    pr.add_argument("--redact", action="store_true", help="in the evidence bundle, replace addresses other than the "
                    "probe's by stable placeholders")
    pr.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                    help="no colour in the report (also when NO_COLOR is set, or stdout is not a terminal)")


def cmd_probe(ns: argparse.Namespace, log: Any) -> int:
    if ns.service is not None:
        from tracer.cli import servicecmd

        return servicecmd.run(ns, log, _probe)
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


def _probe(ns: argparse.Namespace, log: Any, req: Any, held: Any, emit: Optional[Callable[[str], Any]] = None) -> int:
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
    if ns.check_fixes if ns.check_fixes is not None else held is not None:
        from tracer.pipeline import checkfixes

        report = checkfixes.check(report, log)  # whom else each fix changes, in a shadow copy
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
    written = (emit or console.write_out)(out)  # the report first: a full disk for the bundle leaves it intact
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

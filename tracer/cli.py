"""The `fwtrace` command: parse arguments into frozen values, dispatch, turn errors into messages."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from typing import Any, Callable, Optional, Sequence

from tracer import modes
from tracer.errors import ExitStatus, FwtraceError, UsageError
from tracer.model import ProbeRequest, Proto

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
  fwtrace probe --proto icmp --dst 2001:db8::1 --json
  fwtrace probe --dport 443 --flags A     (a stray ACK: what does conntrack/the firewall do?)
  fwtrace probe --dport 22 --log          (also log the probe in every iptables chain it enters)
  fwtrace probe --dport 22 --log kmsg     (... with LOG rules, as dmesg shows them)
  fwtrace probe --dport 8080 --ebpf on    (the kernel's drop reason from the start: rp_filter, no socket,
                                         a full accept queue, a netfilter drop outside the traced chains)

"reached" means the service's answer came back out through the firewall: a SYN-ACK for a SYN,
a RST for a stray ACK/FIN to a listening port, a UDP reply (or, for UDP, silence and no ICMP
error: the text says which), an echo reply for ICMP. A reply dropped on its way out (OUTPUT,
POSTROUTING) is not reached. With --count N every packet must have reached.

exit status: 0 reached the service, 1 blocked or unanswered, 2 usage error,
             3 environment problem (not root, missing tool, unknown namespace), 4 internal error
"""

TCP_FLAG_LETTERS = set("FSRPAUEC")


def _bounded(convert: Callable[[str], Any], lo: float, hi: float, noun: str, name: str, low_open: bool = False) -> Any:
    """An argparse type: `convert` the text, then check lo <= value <= hi (lo < value if low_open)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not ((lo < value) if low_open else (lo <= value)) or value > hi:
            raise argparse.ArgumentTypeError(f"{name} out of range ({lo:g}-{hi:g}): {value}")
        return value

    return parse


_port = _bounded(lambda t: int(t, 10), 1, 65535, "a port number", "port")
_count = _bounded(int, 1, 100, "a number", "count")
_timeout = _bounded(float, 0, 60, "a number of seconds", "timeout", low_open=True)


def _addr(text: str) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 or IPv6 address: {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors reach the one place that reports them."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fwtrace", description="Why is my port closed? Trace probe packets through netfilter.")
    p.add_argument("-v", "--verbose", action="store_true", help="log every raw trace event as it arrives")
    p.add_argument("--log-format", choices=("console", "json"), default="console", help="format of fwtrace's own log on stderr")
    p.add_argument("--traceback", action="store_true", help="show the Python traceback of unexpected errors")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    pr = sub.add_parser("probe", help="send probe packets and explain their verdict", epilog=EPILOG_PROBE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("--dport", type=_port, help="destination port (required for tcp and udp)")
    pr.add_argument("--proto", choices=[x.value for x in Proto], default="tcp", help="protocol (default tcp; icmp sends an echo request)")
    pr.add_argument("--flags", help="TCP flags in letters, e.g. S, A, SA, F, R, PA (default S)")
    pr.add_argument("--dst", type=_addr, help="destination address (default: an address of the interface the probe arrives "
                    "on, else the target namespace's first global address)")
    pr.add_argument("--src", type=_addr, help="source address (default: 203.0.113.5 / 2001:db8:ffff::5 for a simulated "
                    "remote client; the sender's own address with --local or --from-netns)")
    pr.add_argument("--sport", type=_port, help="source port (default: random per run)")
    pr.add_argument("--count", type=_count, default=1, help="number of probe packets (default 1)")
    pr.add_argument("--netns", help="network namespace of the host under diagnosis (default: the current one)")
    pr.add_argument("--via", metavar="IFACE", help="simulated ingress: the interface the probe arrives on "
                    "(default: the one the route back to --src leaves by)")
    pr.add_argument("--local", action="store_true", help="send from the target namespace itself instead of "
                    "simulating a remote client (the packet takes OUTPUT -> lo -> INPUT)")
    pr.add_argument("--from-netns", help="send from this namespace, a real remote client on a link "
                    "(default: simulate one arriving on --via)")
    pr.add_argument("--print-bpf", action="store_true", help="print the generated BPF programs on stderr (the tc programs "
                    "of simulated ingress, the eBPF probes as rendered for this kernel)")
    pr.add_argument("--ebpf", choices=("auto", "on", "off"), default="auto",
                    help="the kernel's own drop reasons and replies through eBPF (bcc): auto (default) probes again with "
                    "them when the first pass leaves a packet's fate unexplained; on: from the start; off: never")
    pr.add_argument("--timeout", type=_timeout, default=1.0, help="seconds to wait for a reply per packet (default 1)")
    pr.add_argument("-6", "--ipv6", action="store_true", help="pick IPv6 addresses when --dst is not given")
    pr.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    pr.add_argument("--log", nargs="?", const="nflog", choices=("nflog", "kmsg"), default="",
                    help="also log the probes with temporary rate-limited rules at the top of every iptables chain "
                    "of their family: NFLOG read over netlink (default; nothing in dmesg) or `--log kmsg`: LOG "
                    "rules, as dmesg shows them (in a namespace this sets the global nf_log_all_netns for the run)")
    pr.add_argument("--evidence", metavar="DIR", help="write an evidence bundle for a ticket into DIR "
                    "(report, rulesets before/after, instrumentation, raw trace, replies)")

    de = sub.add_parser("demo", help="build a two-namespace lab with the classic shadowed-rule firewall, probe it as a simulated customer, apply the fix, probe from a real second host, tear it down")
    de.add_argument("--json", action="store_true", help="print the probe's JSON document instead of the text report")

    dr = sub.add_parser("doctor", help="say what this machine supports (nftrace, nf_log, BTF, tracefs, kprobes, fentry, "
                        "bcc and headers, drop reasons) and what fwtrace will therefore do; exit 0 when probing works")
    dr.add_argument("--json", action="store_true", help="print the facts as one JSON document")
    dr.add_argument("--no-load", action="store_true", help="do not compile and load the eBPF programs to prove they work")

    cl = sub.add_parser("cleanup", help="remove instrumentation left by fwtrace runs whose process is gone")
    cl.add_argument("--netns", help="namespace to clean (default: the current one)")
    return p


def probe_request(ns: argparse.Namespace) -> ProbeRequest:
    proto = Proto(ns.proto)
    modes.check_request(ns)  # requests whose answer could not be true (issue 11)
    if ns.from_netns is not None and ns.from_netns == ns.netns:
        ns.from_netns, ns.local = None, True  # the sender is the target: a local probe, with its caveat
    if proto is not Proto.ICMP and ns.dport is None:
        raise UsageError(f"--dport is required for {proto.value}", "e.g. --dport 8080")
    if ns.flags is not None:
        if proto is not Proto.TCP:
            raise UsageError(f"--flags only applies to tcp, not {proto.value}", "drop --flags or use --proto tcp")
        bad = set(ns.flags.upper()) - TCP_FLAG_LETTERS
        if not ns.flags or bad:
            raise UsageError(f"unknown TCP flag letters in --flags {ns.flags!r}", "use letters of FSRPAUEC, e.g. S or SA")
    if ns.sport is not None and proto is Proto.ICMP:
        raise UsageError("--sport does not apply to icmp", "drop --sport")
    if ns.src is not None and ns.dst is not None and ns.src.version != ns.dst.version:
        raise UsageError(f"--src {ns.src} and --dst {ns.dst} are of different address families", "give both as IPv4 or both as IPv6")
    if ns.local and ns.from_netns is not None:
        raise UsageError("--local and --from-netns exclude each other", "drop one of them")
    if ns.via is not None and (ns.local or ns.from_netns is not None):
        raise UsageError(f"--via only applies to simulated ingress, not with {'--local' if ns.local else '--from-netns'}",
                         "drop --via")
    if ns.via is not None and (not ns.via or "/" in ns.via or len(ns.via) > 15):
        raise UsageError(f"not an interface name: {ns.via!r}", "see `ip link`")
    if ns.ipv6 and ns.dst is not None and ns.dst.version != 6:
        raise UsageError(f"-6 given but --dst {ns.dst} is IPv4", "drop -6 or give an IPv6 --dst")
    return ProbeRequest(
        dport=ns.dport or 0, proto=proto, flags=(ns.flags or "S").upper(), dst=ns.dst, src=ns.src,
        sport=ns.sport, count=ns.count, netns=ns.netns, from_netns=ns.from_netns, timeout=ns.timeout,
        via=ns.via, local=ns.local, print_bpf=ns.print_bpf, log=ns.log, ebpf=ns.ebpf,
        ipv6=ns.ipv6 or (ns.dst is not None and ns.dst.version == 6) or (ns.src is not None and ns.src.version == 6),
    )


def cmd_probe(ns: argparse.Namespace, log: Any) -> int:
    req = probe_request(ns)  # validated before anything heavier is imported or touched
    # scapy's import is most of a probe's time; let it run while the snapshot waits for nft.
    threading.Thread(target=_import_scapy, daemon=True).start()

    from tracer.driver import Run
    from tracer.outcome import exit_status
    from tracer.report import render

    run = Run(req, log, log_events=ns.verbose, full_snapshot=bool(ns.evidence))
    report = run.execute()
    text = render(report)
    sys.stdout.write(report.dumps() + "\n" if ns.json else text)
    if ns.evidence:
        from tracer.evidence import bundle_files, write_bundle

        from .doctor import dumps, gather

        files = bundle_files(report, text)
        files["doctor.json"] = (dumps(gather(load=False)) + "\n").encode()  # what the machine supports
        write_bundle(ns.evidence, files)
        log.info("evidence written", directory=ns.evidence)
    return exit_status(report)


def cmd_demo(ns: argparse.Namespace, log: Any) -> int:
    from tracer import lab

    return lab.demo(log, as_json=ns.json)


def cmd_doctor(ns: argparse.Namespace, log: Any) -> int:
    from . import doctor

    facts = doctor.gather(load=not ns.no_load)
    sys.stdout.write(doctor.dumps(facts) + "\n" if ns.json else doctor.render(facts))
    return ExitStatus.OK if doctor.verdict(facts) else ExitStatus.ENVIRONMENT


def cmd_cleanup(ns: argparse.Namespace, log: Any) -> int:
    from tracer.undo import cleanup

    removed = cleanup.clean_stale(ns.netns, log)
    print(f"undid {len(removed)} change(s) left by dead fwtrace runs" + (": " + "; ".join(removed) if removed else ""))
    return ExitStatus.OK


def _import_scapy() -> None:
    try:
        import scapy.layers.inet  # noqa: F401
    except ImportError:
        pass  # reported where it is used


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "probe": cmd_probe,
    "demo": cmd_demo,
    "cleanup": cmd_cleanup,
    "doctor": cmd_doctor,
}


def configure_logging(fmt: str, verbose: bool) -> Any:
    import structlog

    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        # Resolved at each call: sys.stderr may be replaced (pytest's capture, a redirect).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("fwtrace")


class _Terminated(Exception):
    pass


def _on_signal(signum: int, frame: Any) -> None:
    # Raised in the main thread wherever it is, so every ExitStack on the way out undoes its part.
    raise _Terminated(signal.Signals(signum).name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    ns: Optional[argparse.Namespace] = None
    try:
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return ExitStatus.USAGE
        log = configure_logging(ns.log_format, ns.verbose)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)
        return int(COMMANDS[ns.command](ns, log))
    except FwtraceError as e:
        print(f"fwtrace: error: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return int(e.status)
    except (KeyboardInterrupt, _Terminated) as e:
        print(f"fwtrace: interrupted ({e or 'SIGINT'}); instrumentation removed", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except Exception as e:
        if ns is not None and ns.traceback:
            raise
        print(f"fwtrace: internal error: {type(e).__name__}: {e} (rerun with --traceback and report it)", file=sys.stderr)
        return int(ExitStatus.INTERNAL)


def run() -> None:
    sys.exit(main())

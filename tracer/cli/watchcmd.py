"""`fwtrace watch`: its parser and command (moved whole from tracer/cli/__init__.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from tracer.cli import cliargs
from tracer.system import console
from tracer.cli.cliargs import check_evidence_path
from tracer.errors import EnvironmentProblem, Interrupted
from tracer.model import Proto


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
  0    no flow seen was blocked (a flow cut at the window's edge: unknown, neither)
  1    a flow was blocked, or nothing of the filter arrived
  2    usage error (bad option or value, unknown interface)
  3    environment problem (not root, missing tool, unknown namespace, --ebpf on where eBPF cannot run)
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
    wa.add_argument("--ebpf", choices=("auto", "on", "off"), default="auto",
                    help="the kernel's drop reasons (eBPF, skb:kfree_skb) for the filter's packets: a flow the kernel "
                    "dropped (rp_filter, no socket...) gets its kernel verdict. auto (default): where this machine can "
                    "load them, else said in the notes; on: fail if it cannot; off: netfilter sources only")
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

"""Write the evidence bundle of a probe run: `--evidence DIR` or `--evidence FILE.tar.gz`.

The system side of the bundle: it lists the target's rulesets with counters before and after the
run, collects the environment (kernel, tools, sysctls, addresses, routes, listening sockets), and
writes everything the renderers make (report.md/.html/.json/.txt, path.svg, probe.pcapng) beside
the raw material `tracer.evidence` already bundles for replay. See `files()` for the list.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import shlex
import tarfile
import tempfile
import time
from typing import Any, Callable, Optional

from tracer import __version__, counters, listing, system
from tracer.model import ProbeRequest

SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.rp_filter",
           "net.ipv4.conf.default.rp_filter", "net.netfilter.nf_conntrack_tcp_loose", "net.netfilter.nf_conntrack_max",
           "net.netfilter.nf_conntrack_count", "net.ipv4.icmp_ratelimit", "net.ipv4.icmp_msgs_per_sec",
           "net.ipv6.icmp.ratelimit", "net.bridge.bridge-nf-call-iptables", "net.netfilter.nf_conntrack_log_invalid")


def _try(argv: list[str]) -> str:
    """A listing for the bundle: its output, or why there is none (a missing tool is not fatal here)."""
    try:
        c = system.run(argv, check=False)
    except Exception as e:  # noqa: BLE001 - the bundle says what it could not list
        return f"(not listed: {e})\n"
    return c.stdout if c.returncode == 0 else f"(`{' '.join(argv)}` failed with exit code {c.returncode}: {c.stderr.strip()})\n"


def rulesets() -> dict[str, str]:
    """The ruleset with counters, in every form the host has (calling thread's namespace)."""
    out = {"nft-ruleset.txt": _try(["nft", "-a", "list", "ruleset"]),
           "iptables-save-c.txt": _try(["iptables-save", "-c"]),
           "ip6tables-save-c.txt": _try(["ip6tables-save", "-c"])}
    for family in listing.legacy_families():
        tool = "iptables-legacy-save" if family == "ip" else "ip6tables-legacy-save"
        out[f"{tool}-c.txt"] = _try([tool, "-c"])
    return out


class Collector:
    """Listings taken around a run, then the bundle written from them and the report."""

    def __init__(self, req: ProbeRequest, argv: list[str]) -> None:
        self.req = req
        self.argv = argv
        self.started = time.time()
        self.before_sets: dict[str, str] = {}

    def before(self) -> None:
        system.require_root()
        with system.netns(self.req.netns):
            self.before_sets = rulesets()
        self.started = time.time()

    def environment(self, report: Any) -> tuple[dict[str, str], dict[str, str]]:
        """(short facts, long listings) of the target namespace and the machine."""
        with system.netns(self.req.netns):
            sysctls = {k: v for k in SYSCTLS if (v := system.sysctl_get(k)) is not None}
            if report.via:
                key = f"net.ipv4.conf.{report.via}.rp_filter"
                sysctls[key] = system.sysctl_get(key) or "?"
            long = {"addresses.txt": _try(["ip", "addr", "show"]),
                    "routes.txt": _try(["ip", "route", "show", "table", "all"]) + "\n" +
                    _try(["ip", "-6", "route", "show", "table", "all"]) + "\n" + _try(["ip", "rule", "show"]),
                    "listening.txt": _try(["ss", "-ltnup"]),
                    "sysctls.txt": "".join(f"{k} = {v}\n" for k, v in sysctls.items())}
            legacy = [f for f in ("ip_tables_names", "ip6_tables_names") if system.proc_net(f).strip()]
        uname = platform.uname()
        facts = {
            "fwtrace version": __version__,
            "command line": shlex.join(["fwtrace", *self.argv[1:]]),  # argv[0] may be a venv path or -m
            "time (UTC)": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "kernel": f"{uname.system} {uname.release} {uname.version} {uname.machine}",
            "target namespace": self.req.netns or "(the one fwtrace ran in)",
            "nft": _try(["nft", "--version"]).strip(),
            "iptables": _try(["iptables", "--version"]).strip(),
            "nf_tables tables": ", ".join(" ".join(line.split()[1:3]) for line in
                                          self.before_sets.get("nft-ruleset.txt", "").splitlines()
                                          if line.startswith("table ")) or "none",
            "iptables-legacy tables": ", ".join(legacy) or "none",
            "probe mode": report.mode or self.req.mode,
            "kernel BTF": "present" if os.path.exists("/sys/kernel/btf/vmlinux") else "absent",
            "tcx (Linux 6.6+)": "yes" if _kernel_at_least(uname.release, 6, 6) else "no",
            "conntrack state in nft trace events (Linux 6.16+)": "yes" if _kernel_at_least(uname.release, 6, 16) else "no",
        }
        return facts, long

    def files(self, report: Any) -> dict[str, bytes]:
        """Every file of the bundle, by name."""
        from tracer.evidence import bundle_files
        from tracer.render import html, jsondoc, markdown, svg, terminal

        with system.netns(self.req.netns):
            after = rulesets()
        facts, long = self.environment(report)
        command = facts["command line"]
        text = terminal.text(report)
        files = dict(bundle_files(report, text))
        files["report.json"] = jsondoc.dumps(report).encode() + b"\n"
        files["report.md"] = markdown.render(report, facts, command).encode()
        files["report.html"] = html.render(report, facts, command).encode()
        files["path.svg"] = svg.for_report(report).encode()
        files["probe.pcapng"] = pcapng_of(report, self.started)
        before_sets = self.before_sets
        if huge(before_sets):
            before_sets, after = on_path(before_sets, report), on_path(after, report)
            files["rulesets-TRIMMED.txt"] = (f"The ruleset has more than {HUGE_LINES} lines: before/ and after/ "
                                             "hold only the tables the probe went through.\n").encode()
        for name, content in before_sets.items():
            files[f"before/{name}"] = content.encode()
        for name, content in after.items():
            files[f"after/{name}"] = content.encode()
        files["counter-deltas.txt"] = counter_deltas(self.before_sets, after).encode()
        files["environment.json"] = json.dumps(facts, indent=2).encode() + b"\n"
        from tracer.doctor import dumps, gather

        files["doctor.json"] = (dumps(gather(load=False)) + "\n").encode()  # what the machine supports
        with system.netns(self.req.netns):  # the trace names interfaces by index: for the replay
            files["interfaces.json"] = (json.dumps(system.interface_names(), sort_keys=True) + "\n").encode()
        for name, content in long.items():
            files[f"environment/{name}"] = content.encode()
        return files

    def write(self, report: Any, dest: "Reservation", redact: bool = False) -> str:
        files = self.files(report)
        if redact:
            files = redacted(files, report)
        dest.write(files, f"fwtrace-{report.run_id}")
        return dest.path


STAGING = ".fwtrace-writing"  # in --evidence DIR while a run holds it: its files, until all are written


class Reservation:
    """The --evidence path, held by this run from before the run until the bundle is written or
    given up: a FILE.tar.gz created empty with O_EXCL, a DIR created by us or, when it exists
    empty, claimed by creating DIR/.fwtrace-writing (mkdir is exclusive). A second run with the
    same path is refused (exit 2) instead of mixing its files in. Nothing partial stays behind:
    the files are written in the staging place and moved in at the end; when the disk is full
    (or anything fails) the staging place, and what we created, is removed."""

    def __init__(self, path: str) -> None:
        from tracer.errors import UsageError

        self.path = path
        self.tar = path.endswith(".tar.gz")
        self.made_dir = False
        self.done = False
        hint = "give a new or empty directory, or a new FILE.tar.gz (is another fwtrace run writing there?)"
        try:
            if self.tar:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return
            try:
                os.mkdir(path, 0o700)
                self.made_dir = True
            except FileExistsError:
                pass
            os.mkdir(os.path.join(path, STAGING), 0o700)
        except FileExistsError:
            raise UsageError(f"--evidence {path} is taken: another fwtrace run holds it", hint) from None
        except OSError as e:
            raise UsageError(f"--evidence {path}: {e.strerror}", hint) from None
        if os.listdir(path) != [STAGING]:  # somebody wrote in it after the check
            self.release()
            raise UsageError(f"--evidence {path} is a directory that is not empty; fwtrace never overwrites", hint)

    def write(self, files: dict[str, bytes], top: str) -> None:
        """All the files, or (raising EnvironmentProblem, exit 3) none of them."""
        from tracer.errors import EnvironmentProblem

        tmp = ""
        try:
            if self.tar:
                where = os.path.dirname(os.path.abspath(self.path))
                fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".part", dir=where)
                os.close(fd)
                write_tar(tmp, files, top)
                os.replace(tmp, self.path)
            else:
                staging = os.path.join(self.path, STAGING)
                write_dir(staging, files)
                for name in sorted(os.listdir(staging)):
                    os.rename(os.path.join(staging, name), os.path.join(self.path, name))
                os.rmdir(staging)
            self.done = True
        except OSError as e:
            if tmp:
                _quiet(os.unlink, tmp)
            self.release()
            raise EnvironmentProblem(f"could not write the evidence to {self.path}: {e.strerror or e}",
                                     "free space there, or give another --evidence path; the report above is complete"
                                     ) from None

    def release(self) -> None:
        """Give the path up, leaving it as it was before the run (once written: nothing to do)."""
        if self.done:
            return
        self.done = True
        if self.tar:
            _quiet(os.unlink, self.path)
            return
        import shutil

        shutil.rmtree(os.path.join(self.path, STAGING), ignore_errors=True)
        if self.made_dir:
            _quiet(os.rmdir, self.path)


def _quiet(fn: Callable[[str], Any], path: str) -> None:
    try:
        fn(path)
    except OSError:
        pass


HUGE_LINES = 20000  # a kube-proxy host with thousands of Services: keep what the probe met


def huge(sets: dict[str, str]) -> bool:
    return sum(text.count("\n") for text in sets.values()) > HUGE_LINES


def on_path(sets: dict[str, str], report: Any) -> dict[str, str]:
    """The listings cut down to the tables the probe (or its reply) went through."""
    met = {(s.event.family, s.event.table) for r in report.results for s in (*r.steps, *r.reply_steps)}
    out = {}
    for name, text in sets.items():
        if name.startswith("nft"):
            out[name] = counters.nft_tables(text, met)
        else:
            family = "ip6" if name.startswith("ip6") else "ip"
            out[name] = counters.save_tables(text, {t for f, t in met if f == family})
    return out


def _kernel_at_least(release: str, major: int, minor: int) -> bool:
    try:
        parts = [int(x) for x in release.split("-")[0].split(".")[:2]]
    except ValueError:
        return False
    return tuple(parts) >= (major, minor)


def counter_deltas(before: dict[str, str], after: dict[str, str]) -> str:
    lines = ["# Counters that moved during the run (all traffic, not only the probe's), before -> after", ""]
    for name, parse in (("nft-ruleset.txt", counters.nft_counters),) + tuple(
            (n, counters.save_counters) for n in sorted(after) if n.endswith("-save-c.txt")):
        if name in before and name in after:
            label = "nft" if name.startswith("nft") else name.replace("-save-c.txt", "")
            lines += counters.deltas(parse(before[name]), parse(after[name]), label)
    if len(lines) == 2:
        lines.append("(no counter moved: the rules on the path have no `counter` statement)")
    return "\n".join(lines) + "\n"


def pcapng_of(report: Any, started: float) -> bytes:
    """The probes (rebuilt from their specs: fwtrace's packets are fully determined by them) and
    the replies as captured, each commented with its verdict."""
    from tracer.inject.raw import build
    from tracer.render import pcapng, timeline

    packets = []
    replies = report.evidence.replies if report.evidence is not None else ()
    for i, r in enumerate(report.results):
        when = started + i * 0.001
        packets.append(pcapng.Packet(build(r.spec), when, f"fwtrace probe {i + 1}: {r.spec.summary()}; "
                                     f"verdict {timeline.verdict_text(r)}; reply {r.reply.kind}"))
        if i < len(replies) and replies[i]:
            way = "; ".join(f"{s.event.table} {s.event.chain} {s.event.verdict or s.event.kind.value}" for s in r.reply_steps)
            packets.append(pcapng.Packet(replies[i], when + 0.0005, f"reply to probe {i + 1}: {r.reply.kind}"
                                         + (f"; on its way out: {way}" if way else "")))
    note = ("fwtrace run {}: timestamps give the order only (the run's start time plus 1 ms per probe), "
            "not capture times".format(report.run_id))
    return pcapng.write(packets, f"fwtrace {__version__}", note)


BINARY_RAW = (".nlmsg", ".ip")


def redacted(files: dict[str, bytes], report: Any) -> dict[str, bytes]:
    """Text files with other addresses replaced; the raw trace datagrams (binary, for replay)
    left out, as they would carry addresses a text filter cannot reach."""
    from tracer.redact import Redactor

    keep = {str(a) for r in report.results for a in (r.spec.src, r.spec.dst)}
    red = Redactor(keep)
    out: dict[str, bytes] = {}
    for name, content in files.items():
        if name.endswith(BINARY_RAW):
            continue
        if name.endswith(".pcapng"):
            out[name] = content  # the probe's own packets and their replies only
            continue
        out[name] = red.text(content.decode(errors="replace")).encode()
    out["REDACTED.txt"] = (f"Addresses other than the probe's ({', '.join(sorted(keep))}) were replaced by "
                           "placeholders from 198.18.0.0/15 and 2001:db8:fade::/48, the same placeholder for the "
                           "same address throughout the bundle. The raw trace datagrams (*.nlmsg, reply-*.ip) are "
                           "left out, so this bundle cannot be replayed offline.\n").encode()
    return out


def write_dir(directory: str, files: dict[str, bytes]) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


def write_tar(path: str, files: dict[str, bytes], top: str, now: Optional[Callable[[], float]] = None) -> None:
    """One file to attach: FILE.tar.gz with everything under `top/` (written at `path` itself:
    Reservation.write gives it a staging name and moves it into place)."""
    mtime = (now or time.time)()
    with tarfile.open(path, "w:gz") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(content), int(mtime), 0o600
            tar.addfile(info, io.BytesIO(content))

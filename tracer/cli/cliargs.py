"""The values of fwtrace's arguments: the argparse types with their range checks, and the checks
that turn a parsed `fwtrace probe` into a ProbeRequest (tracer/cli/__init__.py builds the parser)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tempfile
from typing import Any, Callable, Optional

from tracer.plan import modes
from tracer.errors import UsageError
from tracer.model import ProbeRequest, Proto

TCP_FLAG_LETTERS = set("FSRPAUEC")


def bounded(convert: Callable[[str], Any], lo: float, hi: float, noun: str, name: str, low_open: bool = False) -> Any:
    """An argparse type: `convert` the text, then check lo <= value <= hi (lo < value if low_open)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            allowed = f"more than {lo:g}, at most {hi:g}" if low_open else f"{lo:g}-{hi:g}"
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r} (allowed: {allowed})") from None
        if not ((lo < value) if low_open else (lo <= value)) or value > hi:
            raise argparse.ArgumentTypeError(f"{name} out of range ({lo:g}-{hi:g}): {text}")
        return value

    return parse


_INT = re.compile(r"-?[0-9]+\Z")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


def ascii_int(text: str) -> int:
    """int() also takes `８０` (full-width), `8_0`, ` 80` and `+80`: ASCII digits only here."""
    if not _INT.match(text):
        raise ValueError(text)
    return int(text, 10)


def ascii_float(text: str) -> float:
    """float() also takes `inf`, `nan`, `1e1` and other scripts' digits: plain decimals only here."""
    if not _FLOAT.match(text):
        raise ValueError(text)
    return float(text)


port = bounded(ascii_int, 1, 65535, "a port number", "port")
count = bounded(ascii_int, 1, 100, "a number", "count")
_timeout_value = bounded(ascii_float, 0, 60, "a number of seconds", "timeout", low_open=True)


def timeout(text: str) -> Any:
    try:
        return _timeout_value(text)
    except argparse.ArgumentTypeError as e:
        if str(e).startswith("not "):
            raise
        raise argparse.ArgumentTypeError(f"{text} is not allowed: the timeout is more than 0 and at most 60 "
                                         "seconds") from None


def address(text: str) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 or IPv6 address: {text!r}") from None


def probe_request(ns: argparse.Namespace) -> ProbeRequest:
    if ns.proto is None:
        ns.proto = Proto.TCP.value  # the default: None only so that --service can tell it was not given
    both = ns.proto == modes.BOTH
    proto = Proto.TCP if both else Proto(ns.proto)
    modes.check_request(ns)  # requests whose answer could not be true
    if ns.from_netns is not None and ns.from_netns == ns.netns:
        ns.from_netns, ns.local = None, True  # the sender is the target: a local probe, with its caveat
    _check_app(ns, proto, both)
    if proto is not Proto.ICMP and ns.dport is None:
        raise UsageError(f"--dport is required for {proto.value}", "e.g. --dport 8080, or --service NAME")
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
    if ns.ipv6 and ns.src is not None and ns.src.version != 6:
        raise UsageError(f"-6 given but --src {ns.src} is IPv4", "drop -6 or give an IPv6 --src")
    if both and ns.log:
        raise UsageError("--log takes one protocol: its rules match the probes' ports of one protocol",
                         "run --proto tcp and --proto udp one after the other with --log, or drop --log")
    from_ssh = _from_ssh(ns, proto)
    if ns.redact and not ns.evidence:
        raise UsageError("--redact applies to the evidence bundle only", "add --evidence DIR or drop --redact")
    return ProbeRequest(
        dport=ns.dport or 0, proto=proto, both=both, flags=(ns.flags or "S").upper(), dst=ns.dst, src=ns.src,
        sport=ns.sport, count=ns.count, netns=ns.netns, from_netns=ns.from_netns, timeout=ns.timeout,
        via=ns.via, local=ns.local, print_bpf=ns.print_bpf, log=ns.log, ebpf="off" if from_ssh else ns.ebpf,
        from_ssh=from_ssh, app=getattr(ns, "app", None) or "", app_user=getattr(ns, "ftp_user", "anonymous"),
        app_password=getattr(ns, "ftp_password", "fwtrace@"),
        ipv6=ns.ipv6 or (ns.dst is not None and ns.dst.version == 6) or (ns.src is not None and ns.src.version == 6),
    )


def _check_app(ns: argparse.Namespace, proto: Proto, both: bool) -> None:
    """--app ftp: a real control session needs a real client socket, and a TCP port to talk to."""
    if not getattr(ns, "app", None):
        return
    if proto is not Proto.TCP or both or (ns.flags or "S").upper() != "S":
        raise UsageError("--app ftp talks FTP over tcp: its control probe is a SYN", "drop --proto/--flags")
    if not ns.local and ns.from_netns is None:
        raise UsageError("--app ftp needs a real client socket: --local or --from-netns NS",
                         "add --from-netns NS (a client namespace) or --local")
    if ns.src is not None:
        raise UsageError("--app ftp's control session uses the sender's own address: --src does not apply", "drop --src")
    if ns.dport is None:
        ns.dport = 21


def _from_ssh(ns: argparse.Namespace, proto: Proto) -> Optional[str]:
    """--from ssh://...: what a plain socket on the client host can send, and nothing it cannot."""
    url = getattr(ns, "from_url", None)
    if url is None:
        return None
    if not url.startswith("ssh://"):
        raise UsageError(f"--from {url!r}: only ssh:// is supported", "e.g. --from ssh://admin@10.0.0.7")
    from tracer.plan.sshurl import parse

    parse(url)
    for given, name in ((ns.local, "--local"), (ns.from_netns is not None, "--from-netns"), (ns.via is not None, "--via"),
                        (ns.src is not None, "--src")):
        if given:
            raise UsageError(f"--from ssh:// sends from the client's own address and route: {name} does not apply",
                             f"drop {name}")
    if proto is Proto.ICMP:
        raise UsageError("--from ssh:// sends with a plain socket on the client: tcp or udp only", "use --proto tcp or udp")
    if ns.flags is not None and ns.flags.upper() != "S":
        raise UsageError(f"--from ssh:// sends a real connect (a SYN): --flags {ns.flags} needs raw sockets",
                         "drop --flags, or probe with --from-netns / simulated ingress")
    if ns.log:
        raise UsageError("--log does not apply with --from ssh:// (the kernel-log rules match the probe's IP id, "
                         "which the client's kernel picks)", "drop --log")
    if ns.ebpf == "on":
        raise UsageError("--ebpf on does not apply with --from ssh:// (its keys match the probe's IP id, which the "
                         "client's kernel picks)", "drop --ebpf")
    return str(url)


def check_evidence_path(path: Optional[str]) -> None:
    """--evidence must be writable and overwrite nothing: a new or empty directory, or a new
    .tar.gz file. Checked by really creating (and removing) a file there, since root passes
    every access(2) test, even for /proc."""
    if path is None:
        return
    hint = "give a new or empty directory, or a new FILE.tar.gz"
    if not path:
        raise UsageError("--evidence needs a path", hint)
    is_dir = os.path.isdir(path)
    if path.endswith(".tar.gz") or not is_dir:
        if os.path.lexists(path):
            raise UsageError(f"--evidence {path} exists and is not a directory; fwtrace never overwrites", hint)
        where = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(where):
            raise UsageError(f"--evidence {path}: directory {where} does not exist", hint)
    else:
        if os.listdir(path):
            raise UsageError(f"--evidence {path} is a directory that is not empty; fwtrace never overwrites", hint)
        where = path
    try:
        fd, probe = tempfile.mkstemp(prefix=".fwtrace-check-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--evidence {path}: cannot write in {where}: {e.strerror}", hint) from None


# --- fwtrace watch --------------------------------------------------------------------------------
def network(text: str) -> Any:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address or prefix: {text!r} (e.g. 203.0.113.5 or 203.0.113.0/24)") from None


def duration(text: str) -> float:
    """`30s`, `2m`, `90` (seconds): more than 0, at most watchplan.MAX_DURATION."""
    from tracer.plan.watchplan import MAX_DURATION

    t = text.strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m)") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"duration out of range: {text} (more than 0, at most {MAX_DURATION:g}s)")
    return value


def max_packets(text: str) -> int:
    from tracer.plan.watchplan import MAX_PACKETS

    return int(bounded(lambda t: int(t, 10), 1, MAX_PACKETS, "a number", "--max-packets")(text))


def watch_request(ns: argparse.Namespace) -> Any:
    from tracer.pipeline.watch import WatchRequest
    from tracer.plan.watchplan import WatchFilter

    proto = Proto(ns.proto) if ns.proto else None
    if ns.src is None and ns.dport is None and proto is None and not ns.all:
        raise UsageError("a watch with no --src, --dport or --proto would trace every packet",
                         "narrow it (e.g. --src 203.0.113.5 --dport 8080), or say --all")
    if proto is Proto.ICMP and ns.dport is not None:
        raise UsageError("--dport does not apply to --proto icmp", "drop --dport")
    f = WatchFilter(ns.src, ns.dport, proto, ns.all)
    return WatchRequest(f, ns.duration, ns.max_packets, ns.netns, ns.iface, packets=ns.packets,
                        evidence=bool(getattr(ns, "evidence", None)), ebpf=getattr(ns, "ebpf", "off"))

"""`fwtrace what-if -- CMD` and `fwtrace replay BUNDLE`: the probe run in a shadow copy of a firewall.

what-if: the target's state is listed (read only), copied into a shadow (tracer/system/shadow.py),
probed from a sample of sources before and after the admin's command runs there; the host's own
namespaces are never changed. replay: the shadow is built from an evidence bundle's snapshot and
the bundle's probe is run again in it, then compared with the bundle's verdict, deciding rule
and reply.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from tracer import __version__
from tracer.errors import ExitStatus, FwtraceError, UsageError
from tracer.model import ProbeRequest, Proto
from tracer.pipeline.driver import Run
from tracer.plan import ownercmd
from tracer.plan import shadow as plan
from tracer.plan import shadow_env
from tracer.plan.ownerrules import Target, Translation
from tracer.render.jsondoc import SCHEMA_VERSION
from tracer.system import bundle_io
from tracer.system.shadow import Shadow, capture, fingerprint, firewalld_services

DEFAULT_CLIENT4, DEFAULT_CLIENT6 = "203.0.113.5", "2001:db8:ffff::5"
MAX_EXPOSED = 8  # the client on at most this many other listening ports


class CommandFailed(FwtraceError):
    """The admin's command failed inside the shadow (exit 6): it would likely fail on the host too."""

    status = ExitStatus.SHADOW_COMMAND


class BadBundle(FwtraceError):
    """Not an fwtrace evidence bundle, or one from a newer fwtrace (exit 7)."""

    status = ExitStatus.BAD_BUNDLE


def outcome(report: Any) -> str:
    """A probe's result in a word or two: "open", or how it was stopped."""
    if report.reached:
        return "open"
    p = report.to_json()["packets"][0]
    reply = str(p.get("reply") or "none").split()[0]
    return f"{p['verdict']} ({reply})" if reply != "none" else str(p["verdict"])


def probe(shadow: Shadow, req: ProbeRequest, log: Any) -> Any:
    report = Run(replace(req, netns=shadow.netns), log).execute()
    if not report.cleanup_ok:  # the probe's own cleanup proof, inside the shadow
        shadow.notes.append("a probe in the shadow left: " + "; ".join(report.leftover))
    return report


def _client(req: ProbeRequest, dst: Any) -> str:
    if req.src is not None:
        return str(req.src)
    if req.from_netns is not None and dst is not None:
        from tracer import system
        from tracer.system.raw import source_address

        with system.netns(req.from_netns):  # read only: where the real client would send from
            a = source_address(dst)
        if a is not None:
            return str(a)
    return DEFAULT_CLIENT6 if (dst is not None and dst.version == 6) or req.ipv6 else DEFAULT_CLIENT4


def _dst(req: ProbeRequest, state: plan.State) -> Any:
    if req.dst is not None:
        return req.dst
    fam = 6 if req.ipv6 else 4
    for lk in state.links:
        for a, _ in lk.addrs:
            ip = ipaddress.ip_address(a)
            if ip.version == fam and not ip.is_loopback:
                return ip
    return None


def plan_probes(req: ProbeRequest, state: plan.State, argv: list[str], client: str) -> list[plan.Probe]:
    """Every sampled source on the probe's port and the ports the command names; the client also
    on the other ports the host exposes."""
    version = ipaddress.ip_address(client).version
    sources = plan.sample_sources(state, client, version)
    proto = req.proto.value
    ports = [req.dport] + [p for p in plan.command_ports(argv) if p != req.dport]
    probes = [plan.Probe(s, port, proto) for port in ports for s in sources]
    exposed = sorted({x.port for x in state.listeners if x.proto == proto and x.port not in ports
                      and not x.addr.startswith("127.") and x.addr != "::1"})[:MAX_EXPOSED]
    probes += [plan.Probe(sources[0], port, proto) for port in exposed]
    return probes


def what_if(req: ProbeRequest, argv: list[str], log: Any, bundle: Optional[str] = None) -> plan.WhatIf:
    """`bundle`: the shadow is built from an evidence bundle's snapshot instead of a live target
    (a ticket's firewall, on the engineer's machine)."""
    tool = plan.check_command(argv)
    intent = ownercmd.parse(argv) if tool in plan.OWNER_TOOLS else None
    host_before = fingerprint(req.netns) if bundle is None else None
    if bundle is None:
        state = capture(req.netns)
    else:
        files = read_bundle(bundle)
        state, missing = state_of_bundle(files, check_bundle(files, bundle))
        state = replace(state, not_copied=(*(f"not in the bundle: {m}" for m in missing), *state.not_copied))
    translated = None
    if intent is not None:  # before anything is built: a target without the owner's layout is refused
        translated = ownercmd.translate(intent, owner_target(state, bundle is None))
    dst = _dst(req, state)
    if dst is None:
        raise UsageError("the target has no address to probe", "give --dst")
    client = _client(req, dst)
    probes = plan_probes(req, state, list(translated.rules) if translated else argv, client)
    base = ProbeRequest(dport=req.dport, proto=req.proto, dst=dst, timeout=req.timeout, ebpf="off")
    with Shadow(state, log) as sh:
        def round_() -> tuple[str, ...]:
            out = []
            for p in probes:
                sh.reachable(p.source.addr)
                out.append(outcome(probe(sh, replace(base, src=ipaddress.ip_address(p.source.addr), dport=p.port,
                                                     proto=Proto(p.proto)), log)))
            return tuple(out)

        before = round_()
        if translated is None:
            _run(sh, list(argv))
        else:
            translated = apply(sh, translated)
        after = round_()
        notes = tuple(sh.notes)
        names = sh.namespaces
    # The proof: the shadow's namespaces are gone, and the target lists as it did before.
    from tracer.system import netns_list

    left = [n for n in names if n in netns_list()]
    unchanged = fingerprint(req.netns) == host_before if bundle is None else None
    return plan.WhatIf(tuple(argv), tuple(probes), before, after, notes, state.depends,
                       plan.changes(probes, before, after), tuple(left), unchanged, translated)


def _run(sh: Shadow, argv: list[str], input: Optional[str] = None, what: str = "the command") -> None:
    c = sh.run(argv, input=input)
    if c.returncode != 0:
        first = (c.stderr.strip().splitlines() or [c.stdout.strip() or "(no output)"])[0]
        raise CommandFailed(f"{what} failed in the shadow (exit {c.returncode}): {first}",
                            "it would fail on the host too; fix the command and try again")


def owner_target(state: plan.State, live: bool) -> Target:
    """The owner's layout as the target lists it; a live target's firewalld service files."""
    def holding(fam: str, chain: str) -> tuple[str, str]:
        for texts, tool in ((dict(state.ipt), "nft"), (dict(state.legacy), "legacy")):
            if f":{chain} " in texts.get(fam, ""):
                return texts[fam], f"{'iptables' if fam == 'ip' else 'ip6tables'}-{tool}"
        return "", f"{'iptables' if fam == 'ip' else 'ip6tables'}-nft"

    (ipt4, tool4), (ipt6, tool6) = holding("ip", "ufw-user-input"), holding("ip6", "ufw6-user-input")
    services = firewalld_services(state.nft) if live else {}
    return Target(ipt4, ipt6, tool4, tool6, state.nft, services)


def apply(sh: Shadow, tr: Translation) -> Translation:
    """The translated steps, in the shadow; a delete of a rule that is not there is noted, as the
    owner's tool says it (and exits 0)."""
    notes = list(tr.notes)
    for step in tr.steps:
        if step.check and sh.run(list(step.check)).returncode != 0:
            notes.append(step.absent)
            continue
        if step.nft_delete is not None:
            chain, expr = step.nft_delete
            listed = sh.run(["nft", "-a", "list", "chain", "inet", "firewalld", chain]).stdout
            handle = next((m.group(2) for line in listed.splitlines()
                           if (m := re.fullmatch(r"\s*(.*?) # handle (\d+)", line)) and m.group(1) == expr), None)
            if handle is None:
                notes.append(step.absent)
                continue
            _run(sh, ["nft", "delete", "rule", "inet", "firewalld", chain, "handle", handle], what=f"`{step.rule}`")
            continue
        _run(sh, list(step.argv), step.input, what=f"`{step.rule}`")
    return replace(tr, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# replay


def read_bundle(path: str) -> dict[str, bytes]:
    """A bundle's files by their names inside it (the top directory of a .tar.gz stripped)."""
    try:
        files = bundle_io.read_tar(path) if path.endswith((".tar.gz", ".tgz")) else bundle_io.read_dir(path)
    except (OSError, ValueError) as e:
        raise BadBundle(f"cannot read the bundle {path}: {e}", "give the FILE.tar.gz or DIR `fwtrace probe --evidence` wrote")
    if "report.json" not in files:
        raise BadBundle(f"not an fwtrace evidence bundle (no report.json): {path}", "give the FILE.tar.gz or DIR `fwtrace probe --evidence` wrote")
    return files


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def check_bundle(files: Mapping[str, bytes], path: str) -> dict[str, Any]:
    try:
        doc = json.loads(files["report.json"])
        ok = isinstance(doc, dict) and isinstance(doc.get("packets"), list) and doc["packets"] and "run_id" in doc
    except ValueError:
        ok = False
    if not ok:
        raise BadBundle(f"not an fwtrace evidence bundle (report.json is not fwtrace's): {path}",
                        "give the FILE.tar.gz or DIR `fwtrace probe --evidence` wrote")
    if "ruleset.nft" not in files:
        raise BadBundle(f"the bundle has no ruleset to rebuild (ruleset.nft missing): {path}",
                        "a --redact bundle keeps it; an edited bundle may not")
    env = json.loads(files.get("environment.json", b"{}") or b"{}")
    theirs = str(env.get("fwtrace version", "?"))
    theirs = str(doc.get("fwtrace_version") or theirs)
    schema = doc.get("schema_version", 1)
    if _version(theirs) > _version(__version__) or not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise BadBundle(f"the bundle is from a newer fwtrace ({theirs}, report schema {schema}; this is "
                        f"{__version__}, schema {SCHEMA_VERSION})", "replay it with that version or newer")
    return doc


def _sysctls(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((k.strip(), v.strip()) for line in text.splitlines() if " = " in line for k, v in [line.split(" = ", 1)])


def _ss_listeners(text: str) -> tuple[plan.Listener, ...]:
    """`ss -ltnup` lines: "tcp LISTEN 0 16 *:8080 *:* users:..." -> listeners."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0] in ("tcp", "udp") and ":" in f[4]:
            addr, port = f[4].rsplit(":", 1)
            addr = addr.strip("[]").split("%")[0]
            if port.isdigit():
                out.append(plan.Listener(f[0], "::" if addr in ("*", "[::]", "::") else
                                         ("0.0.0.0" if addr == "0.0.0.0" else addr), int(port)))
    return tuple(out)


def state_of_bundle(files: Mapping[str, bytes], doc: Mapping[str, Any]) -> tuple[plan.State, list[str]]:
    """The shadow's state from a bundle, and what the bundle does not carry."""
    text = {k: v.decode(errors="replace") for k, v in files.items() if not k.endswith((".nlmsg", ".ip", ".bin", ".pcapng"))}
    ipt = {fam: text[f"{tool}.txt"] for fam, tool in (("ip", "iptables-nft-save"), ("ip6", "ip6tables-nft-save"))
           if f"{tool}.txt" in text}
    legacy = {fam: text[f"{tool}.txt"] for fam, tool in (("ip", "iptables-legacy-save"), ("ip6", "ip6tables-legacy-save"))
              if f"{tool}.txt" in text}
    native, notes = plan.native_nft(text["ruleset.nft"], ipt)
    missing: list[str] = []
    p = doc["packets"][0]["probe"]
    dst = ipaddress.ip_address(p["dst"])
    links, routes, env_notes = shadow_env.links_and_routes(text, dst, doc.get("via"), missing)
    notes += env_notes
    sysctls = _sysctls(text.get("environment/sysctls.txt", ""))
    if not sysctls:
        missing.append("sysctls (the bundle has no environment/sysctls.txt): the shadow keeps a new namespace's defaults")
    listeners = _ss_listeners(text.get("environment/listening.txt", ""))
    if "environment/listening.txt" not in text:
        reply = str(doc["packets"][0].get("reply") or "")
        refused = doc["packets"][0].get("verdict") == "accept" and (reply.startswith("rst") or "port-unreachable" in reply)
        if refused:  # the bundle itself shows nothing listened there
            missing.append("listening sockets (no environment/listening.txt): none on the probed port, as its reply shows")
        else:
            listeners = (plan.Listener(p["proto"], "::", int(p["dport"])),) if p["proto"] in ("tcp", "udp") else ()
            missing.append(f"listening sockets (no environment/listening.txt): a stand-in listener on the probed port "
                           f"{p['proto']}/{p['dport']} is assumed (the bundle does not say otherwise)")
    if any("-j DNAT" in t or " dnat " in t for t in (*ipt.values(), *legacy.values(), native)):
        missing.append("the hosts behind DNAT/forwarding are not in the bundle")
    nc, depends = plan.dependencies("\n".join([native, *ipt.values(), *legacy.values()]))
    state = plan.State(native, tuple(sorted(ipt.items())), tuple(sorted(legacy.items())), "", (), links, routes,
                       sysctls, listeners, tuple(notes + nc), tuple(depends))
    return state, missing


@dataclass(frozen=True)
class Replay:
    path: str
    fields: tuple[tuple[str, str, str], ...]  # (what, bundle's, replay's) per packet field compared
    missing: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return all(a == b for _, a, b in self.fields)

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.path, "matches": self.matches,
                "compared": [{"what": w, "bundle": a, "replay": b, "same": a == b} for w, a, b in self.fields],
                "not_in_bundle": list(self.missing), "not_copied": list(self.notes)}


def _rule(d: Optional[Mapping[str, Any]]) -> str:
    if not d:
        return "(none)"
    return f"{d.get('family')} {d.get('table')} {d.get('chain')} #{d.get('rule_number')}: {d.get('rule')}"


def replay(path: str, log: Any, timeout: float = 1.0) -> Replay:
    files = read_bundle(path)
    doc = check_bundle(files, path)
    state, missing = state_of_bundle(files, doc)
    packets = doc["packets"]
    p = packets[0]["probe"]
    dst, src = ipaddress.ip_address(p["dst"]), ipaddress.ip_address(p["src"])
    req = ProbeRequest(dport=int(p["dport"]), proto=Proto(p["proto"]), flags=str(p["flags"]), dst=dst,
                       sport=None, count=len(packets), timeout=timeout, ebpf="off", log=str(doc.get("log") or ""))
    with Shadow(state, log) as sh:
        if doc.get("mode") == "from-netns":
            dev, plen = shadow_env.client_link(state.links, src, doc.get("via"))
            sh.client(str(src), plen, dev)
            req = replace(req, from_netns=sh.outside)
        elif doc.get("mode") == "local":
            req = replace(req, local=True)
        else:
            sh.reachable(str(src))
            req = replace(req, src=src, via=doc.get("via"))
        report = probe(sh, req, log)
        notes = tuple(sh.notes)
    got = report.to_json()["packets"]
    fields = []
    for i, (a, b) in enumerate(zip(packets, got), 1):
        tag = f"packet {i} " if len(packets) > 1 else ""
        fields += [(f"{tag}verdict", str(a.get("verdict")), str(b.get("verdict"))),
                   (f"{tag}deciding rule", _rule(a.get("decided_by")), _rule(b.get("decided_by"))),
                   (f"{tag}reply", str(a.get("reply")), str(b.get("reply")))]
    return Replay(path, tuple(fields), tuple(missing), notes)


def render_replay(r: Replay) -> str:
    lines = [f"replay of {r.path} in a shadow built from its snapshot: "
             + ("MATCHES the bundle" if r.matches else "DIFFERS from the bundle"), ""]
    for what, a, b in r.fields:
        lines.append(f"  {'same' if a == b else 'DIFF'}  {what}: bundle {a}" + ("" if a == b else f" | replay {b}"))
    for m in r.missing:
        lines.append(f"not in the bundle: {m}")
    for n in r.notes:
        lines.append(f"shadow: {n}")
    return "\n".join(lines) + "\n"

"""`fwtrace probe --service NAME` and `--service rpc:PROGRAM`: find the service's ports on the target
(tracer/plan/services.py decides from what is read here through the system layer), say which are
probed and why, then probe each as `--dport PORT` would, one report after the other."""
from __future__ import annotations

import argparse
import copy
import json
from typing import Any, Callable, Optional

from tracer.cli.cliargs import probe_request
from tracer.errors import UsageError
from tracer.model import Proto
from tracer.plan import services

RPC_PREFIX = "rpc:"
EPILOG = """\
  fwtrace probe --service ssh       (the ports sshd really listens on, and 22/tcp if /etc/services gives
                                     it: a disagreement is warned about; --proto narrows tcp/udp)
  fwtrace probe --service rpc:mountd --dst 192.0.2.1
        ask rpcbind (port 111) for mountd's ports with a real RPC call; probe them and 111 itself
        (rpc:status for rpc.statd, rpc:nlockmgr, or a program number)
"""


def check(ns: argparse.Namespace) -> tuple[Proto, ...]:
    """The --service request's own checks, before anything is read; its protocols."""
    if ns.dport is not None:
        raise UsageError(f"--service {ns.service} and --dport exclude each other: --service finds the ports itself",
                         "drop --dport, or drop --service and probe that one port")
    if ns.proto == Proto.ICMP.value:
        raise UsageError("--service probes ports: --proto icmp does not apply", "drop --proto or give tcp, udp or both")
    if ns.evidence:
        raise UsageError("--evidence writes one probe's bundle, and --service may probe several ports",
                         "drop --evidence, or probe one port with --dport PORT --evidence ...")
    name = ns.service[len(RPC_PREFIX):] if ns.service.startswith(RPC_PREFIX) else ns.service
    if not name or any(c.isspace() or c in "/#" for c in name):
        raise UsageError(f"not a service name: {ns.service!r}", "e.g. --service ssh, --service domain, --service rpc:mountd")
    protos = (Proto.TCP, Proto.UDP) if ns.proto in (None, "both") else (Proto(ns.proto),)
    probe_request(_sub(ns, 1, protos[:1] if ns.log else protos))  # every other option's checks, as for one port
    return protos


def _sub(ns: argparse.Namespace, port: int, protos: tuple[Proto, ...]) -> argparse.Namespace:
    sub = copy.copy(ns)
    sub.service, sub.dport = None, port
    sub.proto = "both" if len(protos) == 2 else protos[0].value
    return sub


def plan(ns: argparse.Namespace, protos: tuple[Proto, ...]) -> services.ServicePlan:
    """Read the target's /etc/services (or /etc/rpc and rpcbind's answer) and its listeners."""
    from tracer import system
    from tracer.pipeline.drive import host
    from tracer.plan import commands as c
    from tracer.system import rpcbind

    with system.netns(ns.netns):
        every = host.listeners(None, c.Listeners())  # type: ignore[arg-type]  (the handler uses no run state)
        owners = host.socket_owners({s.inode for s in every if s.inode})
        import dataclasses

        socks = [dataclasses.replace(s, process=owners.get(s.inode)) for s in every]
        if not ns.service.startswith(RPC_PREFIX):
            path, text = rpcbind.target_etc("services", ns.netns)
            return services.resolve(ns.service, text, socks, protos, source=path)
        _, rpc_text = rpcbind.target_etc("rpc", ns.netns)
        name, prog = services.rpc_program(ns.service[len(RPC_PREFIX):], rpc_text)
        regs, how = rpcbind.dump()
    return services.resolve_rpc(name, prog, regs, how, socks, protos)


def run(ns: argparse.Namespace, log: Any, probe_one: Callable[..., int]) -> int:
    """Probe each of the plan's targets with `probe_one(ns, log, req, None, emit)` (cli._probe)."""
    from tracer.system import console

    protos = check(ns)
    sp = plan(ns, protos)
    docs: list[Any] = []

    def keep(text: str) -> Optional[str]:
        docs.append(json.loads(text))
        return None

    if not ns.json:
        console.write_out("\n".join(f"{sp.name}: {line}" for line in sp.lines()) + "\n\n")
    status = 0
    for t in sp.targets:
        # --log takes one protocol per run (its rules match one protocol's ports): tcp, then udp
        for protos in ([(p,) for p in t.protos] if ns.log else [t.protos]):
            sub = _sub(ns, t.port, protos)
            status = max(status, probe_one(sub, log, probe_request(sub), None, keep if ns.json else None))
    if ns.json:
        doc = {"service": sp.to_json(), "probes": docs}
        written = console.write_out(json.dumps(doc, indent=2) + "\n")
        if written is not None:
            from tracer.errors import EnvironmentProblem

            raise EnvironmentProblem(f"could not write the report to stdout: {written}", "check where stdout goes")
    return status

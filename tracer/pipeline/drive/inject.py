"""Handlers that build and send the probes: raw sockets, the simulated-ingress port, the RST that
ends a half-open connection, and captured replies put in words."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracer.plan import commands as c
from tracer import system
from tracer.pipeline.drive import checkpoint, print_bpf
from tracer.pipeline.drive.undo import undo_all
from tracer.errors import CommandError, EnvironmentProblem

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def build_packets(run: RunState, cmd: c.BuildPackets) -> tuple[bytes, ...]:
    from tracer.system.raw import build

    return tuple(build(s) for s in cmd.specs)


def describe(run: RunState, cmd: c.Describe) -> str:
    from tracer.system.raw import describe as in_words

    return in_words(cmd.data)


def open_injector(run: RunState, cmd: c.OpenInjector) -> Any:
    from tracer.system.raw import Injector, source_address

    with system.netns(cmd.netns):
        src = source_address(cmd.towards) if cmd.towards is not None else None
        if cmd.towards is not None and src is None:
            raise EnvironmentProblem(f"no route to {cmd.towards} from the sending namespace",
                                     "check `ip route get` there, or give --src")
        inj = run.inj = Injector()
    run.stack.callback(inj.close)
    return src


def open_remote(run: RunState, cmd: c.OpenRemote) -> str:
    """--from ssh://: the SSH session to the client host, its sender running there."""
    from tracer.system.ssh import RemoteClient, RemoteSender

    client = RemoteClient(cmd.url, run.log)
    sender = RemoteSender(client, cmd.timeout)
    run.stack.callback(sender.close)
    run.inj = sender
    run.log.info("client side started over ssh", host=client.dest.name, python=client.hello.get("python"),
                 uid=client.hello.get("uid"))
    return str(client.request({"op": "addrs"}).get("text", ""))


def remote_route(run: RunState, cmd: c.RemoteRoute) -> Any:
    import ipaddress

    from tracer.system.ssh import RemoteSender

    sender = run.sender
    assert isinstance(sender, RemoteSender)
    answer = sender.client.request({"op": "route", "dst": str(cmd.towards)})
    if "src" not in answer:
        raise EnvironmentProblem(f"ssh {sender.client.dest.name}: {answer.get('error', 'no route')}",
                                 "check `ip route get` on the client, or give --dst")
    return ipaddress.ip_address(answer["src"])


def client_saw(run: RunState, cmd: c.ClientSaw) -> tuple[str, str]:
    from tracer.system.ssh import RemoteSender

    sender = run.sender
    assert isinstance(sender, RemoteSender)
    answer = sender.client_saw(cmd.spec)
    return str(answer.get("saw", "unknown")), str(answer.get("text", ""))


def open_port(run: RunState, cmd: c.OpenPort) -> str:
    """"" with the injection port open, or why not when the kernel or the interfaces cannot."""
    from tracer.system import simulate
    from tracer.system.tcbpf import IngressUnavailable

    printer = print_bpf if run.req.print_bpf else None
    try:
        run.port_lock = simulate.lock_namespace()
        run.port_plan = simulate.plan_port(cmd.via, cmd.back)
        port = run.inj = simulate.open_port(run.change, run.req.netns, run.run_id, list(cmd.specs),
                                            run.port_plan, run.log, printer)
        run.stack.callback(port.close)
        return ""
    except (IngressUnavailable, CommandError, OSError) as e:
        reason = str(e)
    run.log.warning("simulated ingress unavailable; probing locally", via=cmd.via, reason=reason)
    errors = undo_all(run)  # whatever part of the port was made
    run.unlock()
    run.port_plan = None
    if errors:
        raise EnvironmentProblem("could not remove the partly built injection port: " + "; ".join(errors),
                                 "run `fwtrace cleanup`")
    return reason


def send(run: RunState, cmd: c.Send) -> float:
    sent = run.sender.send(cmd.spec, cmd.data)
    run.log.debug("sent", packet=cmd.spec.summary())
    checkpoint("inject")
    return float(sent)


def reset(run: RunState, cmd: c.Reset) -> None:
    """Answer the captured SYN-ACK with the RST a real client would send (see simulate)."""
    from tracer.system.raw import build
    from tracer.system.simulate import rst_for_synack

    rst, seq = rst_for_synack(cmd.spec)
    run.sender.send(rst, build(rst, seq))
    run.log.debug("sent", packet=rst.summary(), why="reset the half-open connection the probe made")

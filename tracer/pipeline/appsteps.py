"""`probe --app ftp` as pipeline steps (pure, like tracer/pipeline/probe.py): a real control session
from the probe's client, and a traced probe of each passive data port it is given (PASV, EPSV)
while that session is open, as a real client's data connection would come."""
from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Callable

from tracer.diagnose import ftp
from tracer.model import Mode, PacketSpec, ProbeRequest
from tracer.plan.app_commands import FtpClose, FtpCommand, FtpHelper, FtpOpen
from tracer.plan.commands import BuildPackets, Steps

if TYPE_CHECKING:
    from tracer.pipeline.state import Armed, Exchange, Sending

# The data probes' ports come from the server's replies: until then 0, which their trace rule leaves
# out (tracer/plan/plan.py's match_probe); their source port, IP id and addresses make them ours.
PASSIVE = ("PASV", "EPSV")
WAIT = 3.0  # seconds for the greeting and each reply at least (a server may look up the client's name first)


def data_specs(req: ProbeRequest, specs: tuple[PacketSpec, ...], rng: random.Random) -> tuple[PacketSpec, ...]:
    """One data probe per passive command (PASV is IPv4's only), each a SYN from a port of its own."""
    if req.app != "ftp" or not specs:
        return ()
    first = specs[0]
    used = {s.sport for s in specs}
    out = []
    for cmd in PASSIVE:
        if cmd == "PASV" and first.family == 6:
            continue
        sport = next(p for p in iter(lambda: rng.randrange(33000, 60000), None) if p not in used)
        used.add(sport)
        out.append(dataclasses.replace(first, sport=sport, dport=0, flags="S",
                                       ident=rng.randrange(1, 0xFFFF if first.family == 4 else 0xFFFFF)))
    return tuple(out)


def ftp_session(req: ProbeRequest, sending: Sending, armed: Armed,
                exchange: Callable[..., Steps[Exchange]]) -> Steps[tuple[ftp.FtpSession, list[Exchange]]]:
    """Greeting, login, the control connection's helper, then PASV/EPSV each followed by its data probe."""
    netns = req.from_netns if sending.mode is Mode.FROM_NETNS else None
    dst, wait = sending.target.dst, max(req.timeout, WAIT)
    tried = f"an FTP control session to {dst}:{req.dport} " + (f"from namespace {netns}" if netns else "from the target itself")
    greeting, error, login, sport = yield FtpOpen(netns, dst, req.dport, req.app_user, req.app_password, wait)
    error = error or ftp.greeting_error(req.dport, greeting, wait)
    session = ftp.FtpSession(tried, sport is not None, greeting, error, login)
    if error is not None or sport is None:
        yield FtpClose()
        return session, []
    helper, entry, module, auto = yield FtpHelper(sport)
    passive, exchanges = [], []
    for spec in sending.app_specs:
        cmd = PASSIVE[-1] if spec.family == 6 else PASSIVE[len(passive)]
        reply = yield FtpCommand(cmd)
        port = ftp.passive_port(cmd, reply)
        if port is None:
            passive.append(ftp.Passive(cmd, reply, None))
            continue
        spec = dataclasses.replace(spec, dport=port)
        (data,) = yield BuildPackets((spec,))
        exchanges.append((yield from exchange(req, sending, armed, spec, data)))
        passive.append(ftp.Passive(cmd, reply, port, spec.sport))
    yield FtpClose()
    return dataclasses.replace(session, passive=tuple(passive), helper=helper, conntrack=entry, module=module,
                               auto_helper=auto), exchanges

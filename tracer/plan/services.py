"""`probe --service NAME`: which ports to probe for a service, and why. Pure: works on the text of
the target's /etc/services and /etc/rpc, its listeners (with their processes) and rpcbind's
registrations, all read by tracer/system/ (tracer/cli/servicecmd.py does the reading).

/etc/services only says which port a name is *meant* to have; what answers is the process that
really listens. Both are asked, and where they disagree the plan says so and probes what listens:
    ssh             22/tcp                          # SSH Remote Login Protocol   (/etc/services)
    nlockmgr        100021                          (/etc/rpc)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from tracer.errors import ExitStatus, FwtraceError
from tracer.model import Listener, Proto

MAX_TARGETS = 8  # a process listening on dozens of ports: the first 8 are probed, the rest named
RPCBIND_PORT = 111
PORTMAPPER = 100000
# The daemons that usually serve a service name (beyond NAME and NAMEd themselves).
DAEMONS: dict[str, tuple[str, ...]] = {
    "ssh": ("sshd", "dropbear"),
    "domain": ("named", "dnsmasq", "unbound", "systemd-resolve", "pdns_server", "pdns_recursor", "knotd", "coredns"),
    "http": ("nginx", "apache2", "httpd", "lighttpd", "caddy", "haproxy"),
    "https": ("nginx", "apache2", "httpd", "lighttpd", "caddy", "haproxy"),
    "ftp": ("vsftpd", "proftpd", "pure-ftpd"),
    "smtp": ("master", "exim4", "sendmail", "opensmtpd"),
    "sunrpc": ("rpcbind", "portmap"),
    "ntp": ("ntpd", "chronyd"),
    "mysql": ("mysqld", "mariadbd"),
    "postgresql": ("postgres",),
    "imap2": ("dovecot",),
    "imaps": ("dovecot",),
    "tftp": ("in.tftpd", "tftpd"),
    "ldap": ("slapd",),
}
# Names people use for RPC programs that /etc/rpc spells otherwise.
RPC_ALIASES = {"statd": "status", "rpc.statd": "status", "lockd": "nlockmgr", "rpc.mountd": "mountd",
               "portmap": "portmapper", "rpcbind": "portmapper"}


class ServiceUnknown(FwtraceError):
    status = ExitStatus.SERVICE_UNKNOWN


@dataclass(frozen=True)
class Entry:
    """One line of /etc/services."""

    name: str
    port: int
    proto: Proto
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Registration:
    """One mapping of rpcbind's PMAPPROC_DUMP answer."""

    prog: int
    vers: int
    proto: Proto
    port: int


@dataclass(frozen=True)
class Target:
    """One probe of the service: a port with its protocols (tcp and udp on one port: one run)."""

    port: int
    protos: tuple[Proto, ...]
    why: str

    def label(self) -> str:
        return "+".join(p.value for p in self.protos) + f"/{self.port}"


@dataclass(frozen=True)
class ServicePlan:
    name: str
    targets: tuple[Target, ...]
    registered: tuple[str, ...] = ()  # "22/tcp", as /etc/services (or rpcbind) gives it
    listening: tuple[Listener, ...] = ()  # the service's own listeners
    warnings: tuple[str, ...] = ()  # where the configuration and the listeners disagree
    notes: tuple[str, ...] = ()  # how the ports were found (rpcbind's answer, ports left out)
    source: str = "/etc/services"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "registered": list(self.registered),
            "listening": [{"proto": s.proto.value, "addr": str(s.addr), "port": s.port, "process": s.process}
                          for s in self.listening],
            "warnings": list(self.warnings), "notes": list(self.notes),
            "probed": [{"port": t.port, "protos": [p.value for p in t.protos], "why": t.why} for t in self.targets],
        }

    def lines(self) -> list[str]:
        """What the text report says before the probes' own reports."""
        out = [f"warning: {w}" for w in self.warnings] + [f"note: {n}" for n in self.notes]
        out += [f"probing {t.label()}: {t.why}" for t in self.targets]
        return out


def parse_services(text: str) -> list[Entry]:
    """/etc/services (services(5)): `name port/protocol [aliases ...] [# comment]`."""
    out: list[Entry] = []
    for line in text.splitlines():
        f = line.split("#", 1)[0].split()
        if len(f) < 2 or "/" not in f[1]:
            continue
        port, _, proto = f[1].partition("/")
        if not port.isdigit() or proto not in ("tcp", "udp") or not 0 < int(port) < 65536:
            continue
        out.append(Entry(f[0], int(port), Proto(proto), tuple(f[2:])))
    return out


def parse_rpc(text: str) -> dict[str, int]:
    """/etc/rpc (rpc(5)): `name number [aliases ...]` -> every name and alias to its number."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        f = line.split("#", 1)[0].split()
        if len(f) >= 2 and f[1].isdigit():
            for n in (f[0], *f[2:]):
                out.setdefault(n, int(f[1]))
    return out


_PROCESS = re.compile(r"pid (\d+) \((.*)\)\Z")


def comm(sock: Listener) -> Optional[str]:
    m = _PROCESS.match(sock.process or "")
    return m.group(2) if m else None


def _pid(sock: Listener) -> str:
    m = _PROCESS.match(sock.process or "")
    return f"pid {m.group(1)}" if m else "pid ?"


def daemon_names(name: str, aliases: Iterable[str] = ()) -> set[str]:
    names = {name, *aliases}
    out = set()
    for n in names:
        out |= {n, f"{n}d", *DAEMONS.get(n, ())}
    return {x[:15] for x in out}  # the kernel's comm is 15 characters at most


def _ports_text(pairs: Iterable[tuple[int, Proto]]) -> str:
    return ", ".join(f"{port}/{proto.value}" for port, proto in sorted(set(pairs), key=lambda x: (x[0], x[1].value)))


def _by_process(socks: Iterable[Listener]) -> str:
    groups: dict[str, set[tuple[int, Proto]]] = {}
    for s in socks:
        groups.setdefault(comm(s) or "?", set()).add((s.port, s.proto))
    return "; ".join(f"{who} listens on {_ports_text(ports)}" for who, ports in sorted(groups.items()))


def _who(socks: list[Listener]) -> str:
    seen = dict.fromkeys(f"{comm(s) or '?'} ({_pid(s)})" for s in socks)
    return ", ".join(seen) if seen else "nothing"


def _targets(wanted: dict[int, dict[Proto, str]], notes: list[str]) -> tuple[Target, ...]:
    ports = sorted(wanted)
    if len(ports) > MAX_TARGETS:
        notes.append(f"{len(ports)} ports; probing the first {MAX_TARGETS}, not "
                     + ", ".join(str(p) for p in ports[MAX_TARGETS:]))
        ports = ports[:MAX_TARGETS]
    out = []
    for port in ports:
        protos = tuple(p for p in (Proto.TCP, Proto.UDP) if p in wanted[port])
        whys = list(dict.fromkeys(wanted[port][p] for p in protos))
        out.append(Target(port, protos, "; ".join(whys)))
    return tuple(out)


def resolve(name: str, services_text: str, listeners: Iterable[Listener], protos: Iterable[Proto],
            source: str = "/etc/services") -> ServicePlan:
    """The ports of service `name`: those its processes listen on, and those /etc/services gives
    where another process listens (a daemon of another name); where no process of the service
    listens at all, /etc/services' ports, so the report shows what a client meets there. Raises
    ServiceUnknown when neither knows the name."""
    allowed = set(protos)
    entries = [e for e in parse_services(services_text) if (e.name == name or name in e.aliases) and e.proto in allowed]
    registered = {(e.port, e.proto) for e in entries}
    socks = [s for s in listeners if s.proto in allowed]
    names = daemon_names(name, [a for e in entries for a in (e.name, *e.aliases)])
    mine = [s for s in socks if comm(s) in names]
    on_registered = [s for s in socks if (s.port, s.proto) in registered and s not in mine]
    if not registered and not mine:
        raise ServiceUnknown(f"no service {name!r} in {source} and no process named {name} listening",
                             "see `getent services` and `ss -ltnup` for the names and who listens, or give --dport")
    wanted: dict[int, dict[Proto, str]] = {}
    warnings: list[str] = []
    notes: list[str] = []
    for s in mine:
        wanted.setdefault(s.port, {}).setdefault(s.proto, f"{_who([x for x in mine if x.port == s.port])} listens there"
                                                 + ("" if (s.port, s.proto) not in registered else f" ({source} agrees)"))
    for s in on_registered:
        wanted.setdefault(s.port, {}).setdefault(s.proto, f"{source} gives it, and "
                                                 f"{_who([x for x in on_registered if x.port == s.port])} listens there")
    for port, proto in sorted(registered, key=lambda x: (x[0], x[1].value)):
        if not mine and not any(s.port == port and s.proto is proto for s in socks):  # to show what happens there
            wanted.setdefault(port, {}).setdefault(proto, f"{source} gives it; no process of {name} listens anywhere, "
                                                   "nothing listens there")
    mine_ports = {(s.port, s.proto) for s in mine}
    if registered and mine and mine_ports != registered:
        warnings.append(f"{source} says {name} is {_ports_text(registered)}; {_by_process(mine)}")
    elif not registered:
        notes.append(f"no {name!r} in {source} (for {'/'.join(sorted(p.value for p in allowed))}); {_by_process(mine)}")
    return ServicePlan(name, _targets(wanted, notes), tuple(f"{p}/{q.value}" for p, q in
                                                            sorted(registered, key=lambda x: (x[0], x[1].value))),
                       tuple(dict.fromkeys(mine)), tuple(warnings), tuple(notes), source)


def rpc_program(name: str, rpc_text: str) -> tuple[str, int]:
    """`rpc:NAME`'s program: its name and number from /etc/rpc (a number is taken as given)."""
    if name.isdigit():
        return name, int(name)
    table = parse_rpc(rpc_text)
    key = name if name in table else RPC_ALIASES.get(name, name)
    if key not in table:
        raise ServiceUnknown(f"no RPC program {name!r} in /etc/rpc",
                             "see `rpcinfo -p` for the registered ones, e.g. --service rpc:mountd or rpc:100005")
    number = table[key]
    canonical = next((n for n, v in parse_rpc(rpc_text).items() if v == number), key)
    return canonical, number


def resolve_rpc(name: str, prog: int, regs: Optional[list[Registration]], tried: str, listeners: Iterable[Listener],
                protos: Iterable[Proto]) -> ServicePlan:
    """rpcbind's own port 111 and every port it has for program `prog`. `regs` None: rpcbind did
    not answer (`tried` says what was tried and what came back); 111 is probed all the same."""
    allowed = set(protos)
    socks = list(listeners)
    wanted: dict[int, dict[Proto, str]] = {}
    notes: list[str] = []
    for p in (Proto.TCP, Proto.UDP):
        if p in allowed:
            who = [s for s in socks if s.port == RPCBIND_PORT and s.proto is p]
            wanted.setdefault(RPCBIND_PORT, {})[p] = (f"rpcbind's own port (program {PORTMAPPER}), where clients "
                                                      f"ask for {name}'s port; {_who(who)} listens there")
    mine: list[Registration] = []
    if regs is None:
        notes.append(f"rpcbind did not answer: {tried}; only its own port {RPCBIND_PORT} is probed")
    else:
        mine = [r for r in regs if r.prog == prog and r.proto in allowed]
        if not mine:
            have = sorted({r.prog for r in regs})
            notes.append(f"rpcbind ({tried}) has no registration of {name} ({prog}) for "
                         f"{'/'.join(sorted(p.value for p in allowed))}; it has programs "
                         + (", ".join(str(x) for x in have) or "none"))
    for r in sorted(mine, key=lambda r: (r.port, r.proto.value, r.vers)):
        versions = ",".join(str(x.vers) for x in mine if x.port == r.port and x.proto is r.proto)
        who = [s for s in socks if s.port == r.port and s.proto is r.proto]
        wanted.setdefault(r.port, {}).setdefault(
            r.proto, f"rpcbind maps {name} ({prog}) version {versions} to {r.proto.value}/{r.port}; {_who(who)} listens there")
    registered = tuple(dict.fromkeys(f"{r.port}/{r.proto.value}" for r in mine))
    listening = tuple(s for s in socks if any(s.port == r.port and s.proto is r.proto for r in mine))
    return ServicePlan(f"rpc:{name}", _targets(wanted, notes), registered, listening, (), tuple(notes), "rpcbind")


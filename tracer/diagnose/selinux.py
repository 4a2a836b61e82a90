"""SELinux and a service's port: parse what `semanage port -l` and the audit log (or `ausearch -m
AVC`) say, and decide whether SELinux kept the service off the probed port. No I/O: the texts are
read by tracer/pipeline/drive/host.py (`selinux_facts`), only where /sys/fs/selinux/enforce reads 1.

Where SELinux is absent or permissive nothing is said (`facts` returns None). A confined daemon may
bind only ports labelled with its domain's port type: sshd_t binds ssh_port_t (tcp 22); moved to
2222 (unreserved_port_t) its bind is denied and it listens nowhere, so the probe meets no socket:
    semanage port -l:   ssh_port_t                     tcp      22
    audit.log:          type=AVC msg=audit(1733526000.412:311): avc:  denied  { name_bind } for
                        pid=1432 comm="sshd" src=2222 scontext=system_u:system_r:sshd_t:s0-s0:c0.c1023
                        tcontext=system_u:object_r:unreserved_port_t:s0 tclass=tcp_socket permissive=0
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from tracer.model import Finding, Proto

# The port type a daemon's domain binds, where it is not DOMAIN minus `d_t` / `_t` plus `_port_t`
# (the reference policy's names; `semanage port -l` tells which exist on the host).
PORT_TYPES = {"sshd_t": "ssh_port_t", "httpd_t": "http_port_t", "named_t": "dns_port_t", "dnsmasq_t": "dns_port_t",
              "ftpd_t": "ftp_port_t", "postfix_master_t": "smtp_port_t", "sendmail_t": "smtp_port_t",
              "mysqld_t": "mysqld_port_t", "postgresql_t": "postgresql_port_t", "dovecot_t": "pop_port_t",
              "ntpd_t": "ntp_port_t", "chronyd_t": "chronyd_port_t", "rpcbind_t": "portmap_port_t",
              "squid_t": "squid_port_t", "slapd_t": "ldap_port_t", "redis_t": "redis_port_t"}


@dataclass(frozen=True)
class PortLabel:
    """One line of `semanage port -l`: a port type, its protocol, its ports and ranges."""

    type: str
    proto: str
    ranges: tuple[tuple[int, int], ...]

    def covers(self, proto: Proto, port: int) -> bool:
        return self.proto == proto.value and any(lo <= port <= hi for lo, hi in self.ranges)

    def width(self, port: int) -> int:
        return min(hi - lo for lo, hi in self.ranges if lo <= port <= hi)


@dataclass(frozen=True)
class Denial:
    """One AVC denial of a socket's port (name_bind, name_connect, node_bind ...)."""

    perms: tuple[str, ...]
    comm: str
    port: int
    domain: str  # the scontext's type, e.g. sshd_t
    target: str  # the tcontext's type, e.g. unreserved_port_t
    tclass: str
    line: str


@dataclass(frozen=True)
class Selinux:
    """SELinux enforcing on the target, with what was read of its port labels and denials."""

    labels: tuple[PortLabel, ...]
    denials: tuple[Denial, ...]
    semanage_read: bool  # `semanage port -l` gave a listing
    audit_source: str  # "ausearch", "/var/log/audit/audit.log" or "" (none could be read)


_LABEL = re.compile(r"^(\w+_t)\s+(tcp|udp|sctp|dccp)\s+([\d\s,\-]+)$")
_AVC = re.compile(r"avc:\s+denied\s+\{ ([^}]*) \} for .*")


def parse_semanage_ports(text: str) -> list[PortLabel]:
    """`semanage port -l`: `http_port_t   tcp   80, 81, 443, 8008-8009` (header and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        m = _LABEL.match(line.strip())
        if not m:
            continue
        ranges = []
        for part in m.group(3).split(","):
            lo, _, hi = part.strip().partition("-")
            if lo.isdigit() and (not hi or hi.isdigit()):
                ranges.append((int(lo), int(hi or lo)))
        out.append(PortLabel(m.group(1), m.group(2), tuple(ranges)))
    return out


def _field(line: str, name: str) -> str:
    m = re.search(rf"\b{name}=(\"[^\"]*\"|\S+)", line)
    return m.group(1).strip('"') if m else ""


def _type(context: str) -> str:
    parts = context.split(":")
    return parts[2] if len(parts) > 2 else context


def parse_avc(text: str) -> list[Denial]:
    """AVC denials of a port from audit.log or `ausearch -m AVC` lines: the port is `src=` for a bind
    and `dest=` for a connect (the kernel's avc_audit of the socket's address, in decimal)."""
    out = []
    for line in text.splitlines():
        m = _AVC.search(line)
        if not m:
            continue
        port = _field(line, "src") or _field(line, "dest")
        tclass = _field(line, "tclass")
        if not port.isdigit() or not tclass.endswith("_socket") or _field(line, "permissive") == "1":
            continue  # permissive=1: logged, not refused (a permissive domain)
        out.append(Denial(tuple(m.group(1).split()), _field(line, "comm"), int(port), _type(_field(line, "scontext")),
                          _type(_field(line, "tcontext")), tclass, line.strip()))
    return out


def facts(enforce: Optional[str], semanage: str, audit: str, audit_source: str) -> Optional[Selinux]:
    """None unless SELinux is enforcing (`/sys/fs/selinux/enforce` reads 1)."""
    if (enforce or "").strip() != "1":
        return None
    labels = parse_semanage_ports(semanage)
    return Selinux(tuple(labels), tuple(parse_avc(audit)), bool(labels), audit_source)


def port_type_for(domain: str, labels: tuple[PortLabel, ...]) -> Optional[str]:
    """The port type `domain` binds: the table above, else DOMAIN's name, when the listing has it."""
    known = {x.type for x in labels}
    base = domain[:-2] if domain.endswith("_t") else domain
    for t in (PORT_TYPES.get(domain), f"{base}_port_t", f"{base[:-1]}_port_t" if base.endswith("d") else None):
        if t and (t in known or not known):
            return t
    return None


def label_of(labels: tuple[PortLabel, ...], proto: Proto, port: int) -> Optional[str]:
    """The type `proto/port` has: the narrowest range that holds it (a single port before a range)."""
    mine = [x for x in labels if x.covers(proto, port)]
    return min(mine, key=lambda x: x.width(port)).type if mine else None


def decide(sel: Optional[Selinux], proto: Proto, port: int) -> Optional[Finding]:
    """Finding `selinux` when an AVC denial names the port (or the port is labelled for another
    domain than the one denied); None where SELinux is absent, permissive or denied nothing there."""
    if sel is None:
        return None
    mine = [d for d in sel.denials if d.port == port and d.tclass == f"{proto.value}_socket"]
    if not mine:
        return None
    d = mine[-1]  # the latest
    label = label_of(sel.labels, proto, port)
    want = port_type_for(d.domain, sel.labels)
    where = f"{proto.value}/{port}"
    said = f"`semanage port -l` labels {where} {label}" if label else (
        f"`semanage port -l` gives {where} no type of its own" if sel.semanage_read else "`semanage port -l` could not be read")
    owned = ", ".join(f"{x.proto}/" + ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in x.ranges)
                      for x in sel.labels if x.type == want)
    msg = (f"SELinux is enforcing and denied {d.comm or 'the service'} ({d.domain}) {{ {' '.join(d.perms)} }} on "
           f"{where} ({sel.audit_source}: `{d.line}`). {said}"
           + (f", not {want}, the port type {d.domain} may use ({owned})." if want and label != want and owned else
              f", not {want}, the port type {d.domain} may use." if want and label != want else ".")
           + " The service cannot listen there, whatever the firewall allows.")
    if want and label != want:
        # -a adds a port the policy names only in a range; one it names by itself must be modified (-m)
        exact = any(x.covers(proto, port) and x.width(port) == 0 for x in sel.labels)
        fix = f"label the port for the service: semanage port -{'m' if exact else 'a'} -t {want} -p {proto.value} " \
              f"{port}, then restart {d.comm or 'the service'}"
    else:
        fix = (f"the port already has {label}: look for a boolean or a local policy module for {d.domain} "
               f"(`audit2allow -a -w` explains the denial)")
    return Finding("selinux", msg, fix)

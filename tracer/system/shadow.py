"""The shadow: a throwaway namespace that copies a host's firewall state (tracer/plan/shadow.py says
what that state is) so a command can be tried, or a ticket's bundle replayed, without touching the
host. `capture(netns)` only reads the target; `Shadow` builds the copy in a lab of its own
(tracer/system/lab.py: namespace `fwtrace-shadow-<id>-srv`, and `-cli`, the outside world on the
far ends of the stand-in links) and deletes it on close.
"""
from __future__ import annotations

import ipaddress
import json
import os
from typing import Any, Optional

from tracer import system
from tracer.errors import EnvironmentProblem
from tracer.inject.ingress import parse_route_get
from tracer.model import Proto
from tracer.plan import shadow as plan
from tracer.system import listing
from tracer.system.lab import Lab

IPT_SAVE = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
IPT_RESTORE = {"ip": "iptables-nft-restore", "ip6": "ip6tables-nft-restore"}
LEGACY_SAVE = {"ip": "iptables-legacy-save", "ip6": "ip6tables-legacy-save"}
LEGACY_RESTORE = {"ip": "iptables-legacy-restore", "ip6": "ip6tables-legacy-restore"}


PREFIX = "fwtrace-shadow"  # + the pid of the run that made it: `fwtrace cleanup` removes a dead run's


def stale(names: list[str], alive: Any = None) -> list[str]:
    """Shadow namespaces (`fwtrace-shadow<pid>-<id>-srv|cli`) whose run is gone (pure but for
    the liveness check: os.kill(pid, 0))."""
    import re

    from tracer import system

    check = alive or system.pid_alive
    out = []
    for n in names:
        m = re.fullmatch(PREFIX + r"(\d+)-[0-9a-f]+-(srv|cli)", n)
        if m and not check(int(m.group(1))):
            out.append(n)
    return out


def remove_stale() -> list[str]:
    """Delete the shadows of dead runs (a what-if or replay killed with SIGKILL)."""
    removed = []
    for n in stale(system.netns_list()):
        if system.run(["ip", "netns", "del", n], check=False).returncode == 0:
            removed.append(f"shadow namespace {n}")
    return removed


class ShadowError(EnvironmentProblem):
    """The shadow could not be built (exit 3): nothing of it is left."""


def _out(argv: list[str]) -> Optional[str]:
    try:
        c = system.run(argv, check=False)
    except EnvironmentProblem:  # the tool is not installed
        return None
    return c.stdout if c.returncode == 0 else None


def parse_addrs(text: str) -> tuple[plan.Link, ...]:
    """`ip -j addr show` -> links with their global and host addresses (link-local ones are the
    kernel's own)."""
    out = []
    for link in json.loads(text or "[]"):
        addrs = tuple((a["local"], int(a["prefixlen"])) for a in link.get("addr_info", ())
                      if a.get("family") in ("inet", "inet6") and not str(a.get("local", "")).startswith("fe80:"))
        out.append(plan.Link(link["ifname"].split("@")[0], addrs, "UP" in link.get("flags", ())))
    return tuple(out)


def parse_routes(text: str, family: int) -> tuple[plan.Route, ...]:
    """`ip -j route show table main`: the routes that are not the kernel's own (those come back
    with the addresses)."""
    out = []
    for r in json.loads(text or "[]"):
        if r.get("protocol") == "kernel" or r.get("type", "unicast") != "unicast":
            continue
        out.append(plan.Route(str(r.get("dst", "default")), r.get("dev"), r.get("gateway"), family))
    return tuple(out)


def capture(netns: Optional[str]) -> plan.State:
    """The firewall state of `netns` (None: the current namespace), read only."""
    notes: list[str] = []
    with system.netns(netns):
        ipt = {fam: plan.without_stamps(t) for fam, tool in IPT_SAVE.items() if (t := _out([tool])) and plan.save_tables(t)}
        # Only the tables iptables-nft does not own are listed by nft (a kube-proxy host's
        # iptables-nft tables are most of the ruleset, and iptables-restore takes them back).
        owned = {(fam, t) for fam, save in ipt.items() for t in plan.save_tables(save)}
        tables = [tuple(line.split()[1:3]) for line in (_out(["nft", "list", "tables"]) or "").splitlines()
                  if line.startswith("table ")]
        full = "".join(_out(["nft", "list", "table", fam, name]) or "" for fam, name in tables if (fam, name) not in owned)
        native, fnotes = plan.native_nft(full, ipt)
        notes += fnotes
        legacy = {f: plan.without_stamps(_out([LEGACY_SAVE[f]]) or "") for f in listing.legacy_families()}
        ipsets = _out(["ipset", "save"]) or ""
        recent = []
        rdir = "/proc/thread-self/net/xt_recent"
        for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else ():
            try:
                with open(os.path.join(rdir, name)) as f:
                    recent.append((name, plan.parse_recent(f.read())))
            except OSError as e:
                notes.append(f"xt_recent list {name}: unreadable ({e.strerror})")
        links = parse_addrs(_out(["ip", "-j", "addr", "show"]) or "[]")
        routes = parse_routes(_out(["ip", "-j", "route", "show", "table", "main"]) or "[]", 4) + \
            parse_routes(_out(["ip", "-j", "-6", "route", "show", "table", "main"]) or "[]", 6)
        keys = list(plan.SYSCTLS) + [f"net.ipv4.conf.{lk.name}.{k}" for lk in links for k in plan.PER_LINK_SYSCTLS]
        sysctls = tuple((k, v) for k in keys if (v := system.sysctl_get(k)) is not None)
        listeners = tuple(x for name, proto in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp"))
                          for x in plan.parse_proc_listeners(system.proc_net(name), proto))
    if recent:
        notes.append("xt_recent entries copied without their timestamps (they start fresh in the shadow)")
    state = plan.State(native, tuple(sorted(ipt.items())), tuple(sorted(legacy.items())), ipsets, tuple(recent),
                       links, routes, sysctls, listeners)
    nc, depends = plan.dependencies(state.rules_text())
    return plan.State(**{**state.__dict__, "not_copied": tuple(notes + nc), "depends": tuple(depends)})


SERVICE_DIRS = ("/etc/firewalld/services", "/usr/lib/firewalld/services")  # firewalld's own order: /etc first


def firewalld_services(nft: str) -> dict[str, str]:
    """firewalld's service definitions on this machine (the target's filesystem: a --netns target
    shares it), read only and only where the ruleset has firewalld's table."""
    out: dict[str, str] = {}
    if "table inet firewalld" not in nft:
        return out
    for d in reversed(SERVICE_DIRS):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.endswith(".xml"):
                try:
                    with open(os.path.join(d, name)) as f:
                        out[name[:-4]] = f.read()
                except OSError:
                    pass
    return out


def fingerprint(netns: Optional[str]) -> tuple[object, ...]:
    """What changes when anything of the target's firewall changes, cheaply: the nftables ruleset
    generation (every nft and iptables-nft commit bumps it, listing does not), the x_tables
    tables, ipsets and packet-deciding sysctls."""
    from tracer.system.collect import ruleset_generation

    with system.netns(netns):
        try:
            gen: object = ruleset_generation()
        except OSError as e:
            gen = f"unknown ({e})"
        legacy = tuple(plan.without_stamps(_out([LEGACY_SAVE[f]]) or "") for f in listing.legacy_families())
        sysctls = tuple(system.sysctl_get(k) for k in plan.SYSCTLS)
        return (gen, legacy, _out(["ipset", "save"]) or "", sysctls)


class Shadow:
    """The copy, built on enter, deleted on exit (and on any failure while building)."""

    def __init__(self, state: plan.State, log: Any) -> None:
        self.state = state
        self.log = log
        self.lab = Lab(prefix=f"{PREFIX}{os.getpid()}", wired=False)
        self.netns = self.lab.server
        self.outside = self.lab.client
        self.notes: list[str] = list(state.not_copied)
        self._outside_addrs: set[str] = set()

    def __enter__(self) -> "Shadow":
        try:
            self.lab.__enter__()
        except Exception as e:
            raise ShadowError(f"cannot make the shadow's network namespaces: {e}",
                              "fwtrace needs root and network namespace support (`ip netns add` must work)") from e
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.lab.close()

    @property
    def namespaces(self) -> list[str]:
        return self.lab.namespaces

    def run(self, argv: list[str], input: Optional[str] = None) -> system.Completed:
        """A command inside the shadow (never the host): its result, failed or not."""
        with system.netns(self.netns):
            return system.run(argv, input=input, check=False)

    def _restore(self, what: str, argv: list[str], text: str) -> None:
        c = self.run(argv, input=text)
        if c.returncode != 0:
            first = (c.stderr.strip().splitlines() or ["(no output)"])[0]
            raise ShadowError(f"the shadow cannot load the target's {what}: {first}",
                              f"`{' '.join(argv)}` refused it; its tools may be older than the host's")

    def _build(self) -> None:
        s = self.state
        links = [lk for lk in s.links if lk.name != "lo"]
        for lk in links:
            self.lab.link(self.netns, lk.name, self.outside, lk.name)
            for addr, plen in lk.addrs:
                self.lab.addr(self.netns, lk.name, ipaddress.ip_address(addr), plen)
        for lk in s.links:
            if lk.name == "lo":
                for addr, plen in lk.addrs:
                    if addr not in ("127.0.0.1", "::1"):
                        self.lab.addr(self.netns, "lo", ipaddress.ip_address(addr), plen)
        if links:
            self.notes.append(f"interfaces as veth stand-ins ({', '.join(lk.name for lk in links)}); "
                              "their kind, MTU and offloads are not copied")
        with system.netns(self.netns):
            for key, value in s.sysctls:
                if system.sysctl_get(key) is None:
                    self.notes.append(f"sysctl {key}: absent in the shadow, not copied")
                    continue
                try:
                    if system.sysctl_get(key) != value:
                        system.sysctl_set(key, value)
                except OSError as e:
                    self.notes.append(f"sysctl {key} = {value}: not copied ({e})")
        for r in s.routes:
            if r.gateway:
                self._own_outside(r.gateway, r.dev)
            argv = ["ip", "-n", self.netns] + (["-6"] if r.family == 6 else []) + ["route", "add", r.dst] + \
                (["via", r.gateway] if r.gateway else []) + (["dev", r.dev] if r.dev else [])
            if system.run(argv, check=False).returncode != 0:
                self.notes.append(f"route {r.dst}{' via ' + r.gateway if r.gateway else ''}: not copied")
        for fam in (4, 6):
            if links and not any(r.family == fam and r.dst == "default" for r in s.routes) and \
                    any(ipaddress.ip_address(a).version == fam for lk in links for a, _ in lk.addrs):
                self._default_route(fam, links[0])
        self._load_rules()
        for x in plan.stand_ins(s.listeners):
            try:
                self.lab.listen(self.netns, Proto(x.proto), x.port, x.addr)
            except OSError as e:
                self.notes.append(f"stand-in listener {x.proto} {x.addr}:{x.port}: not started ({e.strerror})")
        self.log.info("shadow built", netns=self.netns, links=len(links), listeners=len(s.listeners))

    def _load_rules(self, again: bool = False) -> None:
        s = self.state
        if s.ipsets.strip():
            self._restore("ipsets", ["ipset", "restore"], s.ipsets)
        if s.nft.strip():
            self._restore("nft ruleset", ["nft", "-f", "-"], s.nft)
        for fam, text in s.ipt:
            self._restore(f"{IPT_SAVE[fam]} tables", [IPT_RESTORE[fam]], text)
        for fam, text in s.legacy:
            self._restore(f"{LEGACY_SAVE[fam]} tables", [LEGACY_RESTORE[fam]], text)
        want = dict(s.recent)
        with system.netns(self.netns):
            rdir = "/proc/thread-self/net/xt_recent"
            # again: a list the flushed rules held may outlive them (nf_tables frees rules in a
            # worker after the commit), and the new rules take it over with its entries: clear it
            for name in sorted(set(want) | (set(os.listdir(rdir)) if again and os.path.isdir(rdir) else set())):
                try:
                    with open(f"{rdir}/{name}", "w") as f:
                        if again:
                            f.write("/\n")  # xt_recent: "/" forgets every entry
                        for a in want.get(name, ()):
                            f.write(f"+{a}\n")
                            f.flush()
                except OSError as e:
                    self.notes.append(f"xt_recent list {name}: entries not copied ({e.strerror})")

    def reset(self) -> None:
        """The copy's rules and state back as built (a fix tried in it undone, the probes'
        conntrack entries, meters, limits and xt_recent hits forgotten); addresses, routes,
        sysctls and listeners stay. `rules_listing()` shows whether it worked."""
        with system.netns(self.netns):
            system.run(["nft", "flush", "ruleset"])  # iptables-nft's tables are nf_tables tables too
            for names, tool in (("ip_tables_names", LEGACY_RESTORE["ip"]), ("ip6_tables_names", LEGACY_RESTORE["ip6"])):
                text = plan.empty_tables(system.proc_net(names).split())  # x_tables tables cannot be removed
                if text:
                    system.run([tool], input=text)
            for argv in (["ipset", "destroy"], ["conntrack", "-F"]):
                try:
                    system.run(argv, check=False)
                except EnvironmentProblem:  # not installed: nothing of it to forget
                    pass
        self._load_rules(again=True)

    def rules_listing(self) -> str:
        """The copy's rules and state as text to compare (no counters, no expiry countdowns)."""
        import re

        with system.netns(self.netns):
            out = [system.run(["nft", "-s", "list", "ruleset"], check=False).stdout]
            out += [_out([LEGACY_SAVE[f]]) or "" for f in listing.legacy_families()]
            out.append(_out(["ipset", "save"]) or "")
            rdir = "/proc/thread-self/net/xt_recent"
            for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else ():
                with open(f"{rdir}/{name}") as f:
                    out.append(f"xt_recent {name}: {' '.join(sorted(plan.parse_recent(f.read())))}")
        text = "\n".join(out)
        text = re.sub(r" expires \S+", "", text)
        return re.sub(r"\[\d+:\d+\]", "", "\n".join(x for x in text.splitlines() if not x.startswith("#")))

    def _default_route(self, fam: int, link: plan.Link) -> None:
        """Sampled sources' replies need a way out: a stand-in gateway on the first link."""
        own = next((ipaddress.ip_interface(f"{a}/{p}") for a, p in link.addrs
                    if ipaddress.ip_address(a).version == fam), None)
        if own is None:
            return
        gw = next((h for h in own.network.hosts() if h != own.ip), None) if own.network.num_addresses > 2 else None
        if gw is None:
            return
        self._own_outside(str(gw), link.name)
        six = ["-6"] if fam == 6 else []
        system.run(["ip", "-n", self.netns, *six, "route", "add", "default", "via", str(gw), "dev", link.name], check=False)
        self.notes.append(f"the target has no IPv{fam} default route: the shadow routes other sources out of "
                          f"{link.name} (stand-in gateway {gw}); rp_filter results for them may differ")

    def _own_outside(self, addr: str, dev: Optional[str]) -> None:
        """The outside namespace answers ARP/ND for `addr` on the far end of `dev`."""
        if addr in self._outside_addrs or not dev:
            return
        a = ipaddress.ip_address(addr)
        six = ["nodad"] if a.version == 6 else []
        system.run(["ip", "-n", self.outside, "addr", "add", f"{a}/{a.max_prefixlen}", "dev", dev, *six], check=False)
        self._outside_addrs.add(addr)

    def reachable(self, src: str) -> None:
        """Replies to `src` leave the shadow: its next hop exists on the outside."""
        c = self.run(["ip", "-j", "route", "get", src])
        route = parse_route_get(c.stdout) if c.returncode == 0 else None
        if route is None or route.dev is None or route.kind != "unicast":
            return
        self._own_outside(str(route.gateway or src), route.dev)

    def client(self, addr: str, plen: int, dev: str) -> None:
        """A real client on the outside (`--from-netns` replays): `addr/plen` on the far end of dev."""
        a = ipaddress.ip_address(addr)
        if addr in self._outside_addrs:  # owned as a stand-in gateway: becomes the client, with its subnet
            system.run(["ip", "-n", self.outside, "addr", "del", f"{a}/{a.max_prefixlen}", "dev", dev], check=False)
        self.lab.addr(self.outside, dev, a, plen)
        self._outside_addrs.add(addr)

"""`firewall-cmd ...` as the nft rules firewalld writes into `table inet firewalld` (pure).

Taken from firewalld's src/firewall/core/nftables.py: a zone Z's ports, services and accepting
rich rules go to chain `filter_IN_Z_allow` (build_policy_ports_rules: `tcp dport 8080 accept`,
a service's `<destination>` as `ip daddr`/`ip6 daddr` before it), rejecting and dropping rich
rules to `filter_IN_Z_deny` (_rich_rule_chain_suffix), a rich rule's matches in firewalld's
order (`meta nfproto ipv4`, destination, source, port: _rich_rule_family_fragment,
_rich_rule_destination_fragment, _rich_rule_source_fragment); a source binds a zone in the input
dispatch chain (filter_INPUT_ZONES in 1.x, filter_INPUT_POLICIES in 2.x), before the interfaces.
The default zone is the dispatch chain's last, unconditional jump.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional

from tracer.errors import UsageError
from tracer.plan.ownerrules import Step, Target

HINT = ("what-if knows firewall-cmd [--permanent] [--zone=Z] --add-port=P/PROTO, --remove-port, --add-source=CIDR, "
        "--add-service=NAME, --remove-service, --add-rich-rule='rule ... accept|reject|drop', --reload")
# firewalld's own config/services/*.xml for the common ones, when the target has no file of its own
SERVICES = {"ssh": (("tcp", "22"),), "http": (("tcp", "80"),), "https": (("tcp", "443"),), "http3": (("udp", "443"),),
            "cockpit": (("tcp", "9090"),), "dns": (("tcp", "53"), ("udp", "53")), "smtp": (("tcp", "25"),),
            "imaps": (("tcp", "993"),), "pop3s": (("tcp", "995"),), "mysql": (("tcp", "3306"),),
            "postgresql": (("tcp", "5432"),), "ntp": (("udp", "123"),), "ldap": (("tcp", "389"),),
            "ldaps": (("tcp", "636"),), "nfs": (("tcp", "2049"),), "rdp": (("tcp", "3389"),),
            "vnc-server": (("tcp", "5900-5903"),), "dhcp": (("udp", "67"),), "samba-client": (("udp", "138"),),
            "kerberos": (("tcp", "88"), ("udp", "88"))}
ACTIONS = ("add-port", "remove-port", "add-source", "add-service", "remove-service", "add-rich-rule")


@dataclass(frozen=True)
class Rich:
    family: str = ""  # ipv4 / ipv6 / ""
    source: str = ""
    source_not: bool = False
    destination: str = ""
    port: str = ""
    proto: str = ""
    service: str = ""
    action: str = "accept"  # accept / reject / drop


@dataclass(frozen=True)
class Cmd:
    zone: Optional[str]
    permanent: bool
    reload: bool
    actions: tuple[tuple[str, object], ...]  # (option, value: "8080/tcp", a CIDR, a service name or a Rich)


def _bad(what: str) -> UsageError:
    return UsageError(f"what-if cannot translate this firewall-cmd command: {what}", HINT)


def _port(text: str) -> tuple[str, str]:
    port, _, proto = text.partition("/")
    if proto not in ("tcp", "udp", "sctp", "dccp") or not re.fullmatch(r"\d+(-\d+)?", port) or \
            not all(0 < int(p) < 65536 for p in port.split("-")):
        raise _bad(f"port '{text}' (give PORT/PROTO or FROM-TO/PROTO)")
    return port, proto


def _net(text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _bad(f"address '{text}' (ipsets and MAC addresses are not supported)") from None
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def parse_rich(text: str) -> Rich:
    """firewalld.richlanguage(5), the subset what-if translates."""
    tok = shlex.split(text)
    if not tok or tok[0] != "rule":
        raise _bad(f"rich rule '{text}' (it starts with `rule`)")
    kw: dict[str, object] = {}
    i = 1
    while i < len(tok):
        t = tok[i]
        if t.startswith("family="):
            kw["family"] = t.split("=", 1)[1]
            if kw["family"] not in ("ipv4", "ipv6"):
                raise _bad(f"rich rule family '{kw['family']}'")
        elif t in ("source", "destination"):
            neg = i + 1 < len(tok) and tok[i + 1] == "not"
            i += 1 + neg
            if i >= len(tok) or not tok[i].startswith("address="):
                raise _bad(f"rich rule {t} (what-if translates `{t} [not] address=X`)")
            kw[t] = _net(tok[i].split("=", 1)[1])
            if t == "source":
                kw["source_not"] = neg
            elif neg:
                raise _bad("rich rule `destination not`")
        elif t == "port":
            vals = dict(x.split("=", 1) for x in tok[i + 1:i + 3] if "=" in x)
            if set(vals) != {"port", "protocol"}:
                raise _bad("rich rule port (give `port port=P protocol=tcp|udp`)")
            kw["port"], kw["proto"] = _port(f"{vals['port']}/{vals['protocol']}")
            i += 2
        elif t == "service" and i + 1 < len(tok) and tok[i + 1].startswith("name="):
            kw["service"] = tok[i + 1].split("=", 1)[1]
            i += 1
        elif t in ("accept", "reject", "drop"):
            kw["action"] = t
            if i + 1 < len(tok):
                raise _bad(f"rich rule '{' '.join(tok[i + 1:])}' after {t} (types, limits, log and audit are not supported)")
        else:
            raise _bad(f"rich rule element '{t}' (log, audit, limit, priority, mark, forward-port, masquerade, "
                       "icmp-block are not supported)")
        i += 1
    if "action" not in kw:
        raise _bad("rich rule without accept, reject or drop")
    fam = {4: "ipv4", 6: "ipv6"}
    for k in ("source", "destination"):
        if k in kw:
            v = fam[ipaddress.ip_network(str(kw[k])).version]
            if kw.setdefault("family", v) != v:
                raise _bad(f"rich rule {k} {kw[k]} is not {kw['family']}")
    return Rich(**kw)  # type: ignore[arg-type]


def parse(args: list[str]) -> Cmd:
    zone, permanent, reload = None, False, False
    actions: list[tuple[str, object]] = []
    a = list(args)
    while a:
        arg = a.pop(0)
        name, eq, value = arg.partition("=")
        opt = name[2:] if name.startswith("--") else ""
        if opt in ("zone", *ACTIONS) and not eq:
            if not a:
                raise _bad(f"{name} needs a value")
            value = a.pop(0)
        if opt == "zone":
            zone = value
        elif opt == "permanent" and not eq:
            permanent = True
        elif opt == "reload" and not eq:
            reload = True
        elif opt in ("add-port", "remove-port"):
            actions.append((opt, "/".join(_port(value))))
        elif opt == "add-source":
            actions.append((opt, _net(value)))
        elif opt in ("add-service", "remove-service"):
            if not re.fullmatch(r"[\w.+-]+", value):
                raise _bad(f"service name '{value}'")
            actions.append((opt, value))
        elif opt == "add-rich-rule":
            actions.append((opt, parse_rich(value)))
        else:
            raise _bad(f"unsupported option {arg}")
    if not actions and not reload:
        raise _bad("no change given")
    return Cmd(zone, permanent, reload, tuple(actions))


def service_ports(xml: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """A service's XML (config/services/NAME.xml): its ports and destinations by family."""
    root = ET.fromstring(xml)
    ports = [(p.get("protocol", ""), p.get("port", "")) for p in root.iter("port")]
    dest = root.find("destination")
    return ports, ({k: v for k, v in dest.attrib.items() if k in ("ipv4", "ipv6")} if dest is not None else {})


def _chains(nft: str) -> str:
    m = re.search(r"^table inet firewalld \{.*?^\}", nft, re.S | re.M)
    return m.group(0) if m else ""


def _chain_body(table: str, chain: str) -> list[str]:
    m = re.search(rf"^\s*chain {re.escape(chain)} \{{(.*?)^\s*\}}", table, re.S | re.M)
    if not m:
        return []
    return [re.sub(r"\s*# handle \d+$", "", ln).strip() for ln in m.group(1).splitlines()
            if ln.strip() and not ln.strip().startswith(("type ", "policy "))]


def _dispatch(table: str) -> str:
    for ln in _chain_body(table, "filter_INPUT"):
        m = re.fullmatch(r"jump (filter_INPUT_(?:ZONES|POLICIES|dispatch))", ln)
        if m:
            return m.group(1)
    raise UsageError("the target's inet firewalld table has no input dispatch chain (filter_INPUT_ZONES or "
                     "filter_INPUT_POLICIES)", "what-if knows firewalld 1.x and 2.x layouts")


def default_zone(table: str) -> Optional[str]:
    for ln in reversed(_chain_body(table, _dispatch(table))):
        m = re.fullmatch(r"(?:goto|jump) filter_IN_(\S+)", ln)
        if m:
            return m.group(1)
    return None


def _rule(chain: str, expr: str) -> Step:
    return Step(f"nft add rule inet firewalld {chain} {expr}", ("nft", "-f", "-"),
                input=f"add rule inet firewalld {chain} {expr}\n")


def _delete(chain: str, expr: str, absent: str) -> Step:
    return Step(f"nft delete rule inet firewalld {chain} handle <of: {expr}>", nft_delete=(chain, expr), absent=absent)


def _port_exprs(ports: list[tuple[str, str]], dest: dict[str, str]) -> list[str]:
    out = []
    for proto, port in ports:
        if dest:
            out += [f"{'ip' if fam == 'ipv4' else 'ip6'} daddr {addr} {proto} dport {port} accept" for fam, addr in dest.items()]
        else:
            out.append(f"{proto} dport {port} accept")
    return out


def rich_expr(r: Rich, ports: list[tuple[str, str]]) -> list[str]:
    """The rich rule's nft rules: family, destination, source, port, action."""
    ip = "ip6" if r.family == "ipv6" else "ip"
    head = [f"meta nfproto {r.family}"] if r.family else []
    if r.destination:
        head.append(f"{ip} daddr {r.destination}")
    if r.source:
        head.append(f"{ip} saddr {'!= ' if r.source_not else ''}{r.source}")
    tails = [f"{proto} dport {port}" for proto, port in ports] or [""]
    return [" ".join([*head, t, r.action]).replace("  ", " ") for t in tails]


def translate(c: Cmd, t: Target) -> tuple[list[Step], list[str]]:
    table = _chains(t.nft)
    if not table:
        raise UsageError("the target's firewall has no `table inet firewalld`: firewalld (nftables backend) is not "
                         "managing it", "give the nft/iptables commands to try, or what-if a target where firewalld runs")
    notes: list[str] = []
    if not c.actions:
        return [], ["--reload re-reads the permanent configuration, which the ruleset does not show: nothing applied "
                    "(runtime-only changes on the host would be lost)"]
    zones = sorted(set(re.findall(r"chain filter_IN_(\S+)_allow \{", table)))
    zone = c.zone or default_zone(table)
    if zone is None:
        raise UsageError("cannot tell firewalld's default zone from the target's ruleset", "give --zone=ZONE")
    if zone not in zones:
        raise UsageError(f"firewalld has no zone {zone} in the target's ruleset (zones there: {', '.join(zones) or 'none'})",
                         "give --zone= one of them")
    if c.zone is None:
        notes.append(f"no --zone: the default zone {zone} (the input dispatch's last jump)")
    allow, deny = f"filter_IN_{zone}_allow", f"filter_IN_{zone}_deny"
    steps: list[Step] = []
    for opt, value in c.actions:
        if opt in ("add-port", "remove-port"):
            port, proto = str(value).split("/")
            expr = f"{proto} dport {port} accept"
            steps.append(_rule(allow, expr) if opt == "add-port" else
                         _delete(allow, expr, f"firewalld would say: Warning: NOT_ENABLED: {port}:{proto}"))
        elif opt in ("add-service", "remove-service"):
            ports, dest = _service(str(value), t, notes)
            for expr in _port_exprs(ports, dest):
                steps.append(_rule(allow, expr) if opt == "add-service" else
                             _delete(allow, expr, f"firewalld would say: Warning: NOT_ENABLED: {value}"))
        elif opt == "add-source":
            steps += _source(table, zone, str(value), notes)
        else:
            r = value
            assert isinstance(r, Rich)
            ports = [(r.proto, r.port)] if r.port else []
            if r.service:
                sp, _ = _service(r.service, t, notes)
                ports += sp
            chain = allow if r.action == "accept" else deny
            steps += [_rule(chain, e) for e in rich_expr(r, ports)]
    if c.permanent:
        notes.append("--permanent changes the saved configuration only: the running firewall gets these rules at "
                     "`firewall-cmd --reload` (shown here as they will be after it); give both, or repeat without "
                     "--permanent for the runtime")
    if c.reload:
        notes.append("--reload: nothing more applied for it (it re-reads the permanent configuration; runtime-only "
                     "changes on the host would be lost)")
    return steps, notes


def _service(name: str, t: Target, notes: list[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    if name in t.services:
        try:
            ports, dest = service_ports(t.services[name])
        except ET.ParseError as e:
            raise UsageError(f"the target's firewalld service {name}.xml does not parse: {e}", "fix the file") from None
        notes.append(f"service {name}: ports from the target's {name}.xml ({_ports(ports)})")
        return ports, dest
    if name in SERVICES:
        notes.append(f"service {name}: the target has no {name}.xml here; ports from firewalld's stock definition "
                     f"({_ports(list(SERVICES[name]))})")
        return list(SERVICES[name]), {}
    raise UsageError(f"firewalld service {name}: no {name}.xml in the target and not one of the common ones what-if knows",
                     "give the ports instead: --add-port=PORT/PROTO")


def _ports(ports: list[tuple[str, str]]) -> str:
    return ", ".join(f"{port}/{proto}" for proto, port in ports) or "no ports"


def _source(table: str, zone: str, cidr: str, notes: list[str]) -> list[Step]:
    """The source's zone binding, as the dispatch chain binds zones: the jump (goto in 1.x) and,
    in 2.x, the zone target's rule after it, inserted first (sources dispatch before interfaces)."""
    chain = _dispatch(table)
    body = _chain_body(table, chain)
    ip = "ip6" if ipaddress.ip_network(cidr).version == 6 else "ip"
    verb, tail = "goto", ""
    for k, ln in enumerate(body):
        m = re.fullmatch(r"(.*?)\s*(goto|jump) filter_IN_(\S+)", ln)
        if m:
            verb = m.group(2)
            nxt = body[k + 1] if k + 1 < len(body) else ""
            if m.group(1) and nxt.startswith(m.group(1) + " ") and "filter_IN_" not in nxt:
                tail = nxt[len(m.group(1)) + 1:]
            if m.group(3) == zone:
                break
    match = f"{ip} saddr {cidr}"
    jump = f"insert rule inet firewalld {chain} {match} {verb} filter_IN_{zone}"
    shown = "nft " + jump + (f" (and below it: {match} {tail})" if tail else "")
    # one batch: the zone target's rule inserted first, the jump then above it
    batch = (f"insert rule inet firewalld {chain} {match} {tail}\n" if tail else "") + jump + "\n"
    notes.append(f"source {cidr}: bound to zone {zone} in {chain} (input only: the forward and nat dispatch "
                 "chains firewalld also binds are not probed)")
    return [Step(shown, ("nft", "-f", "-"), input=batch)]

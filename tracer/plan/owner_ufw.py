"""`ufw allow|deny|reject|limit ...` as the iptables rules ufw writes (pure).

Taken from ufw's source: UFWRule.format_rule (src/common.py) gives the rule's matches in ufw's
order (`-i/-o`, `-p`, `-m multiport --dports`, `-d`, `--dport`, `-s`, `--sport`, `-j`), and
backend_iptables._get_rules_from_formatted splits a proto-any rule with a port into a tcp and a
udp line (REJECT's tcp line with `--reject-with tcp-reset`) and a `limit` into ufw's three lines
(`-m conntrack --ctstate NEW -m recent --set`, `... --update --seconds 30 --hitcount 6 -j
ufw-user-limit`, `-j ufw-user-limit-accept`). user.rules keeps them under a `### tuple ###` line:
    ### tuple ### allow tcp 8443 0.0.0.0/0 any 0.0.0.0/0 in
    -A ufw-user-input -p tcp --dport 8443 -j ACCEPT
IPv4 rules go to ufw-user-*, IPv6 ones to ufw6-user-* (ip6tables); a rule naming no address goes to both.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

from tracer.errors import UsageError
from tracer.plan.ownerrules import Step, Target

ACTIONS = {"allow": "ACCEPT", "deny": "DROP", "reject": "REJECT", "limit": "LIMIT"}
HINT = "what-if knows ufw allow|deny|reject|limit [in|out] [on IF] [proto P] [from X [port N]] [to Y [port N]], PORT[/PROTO], insert N, prepend, delete RULE"


@dataclass(frozen=True)
class Rule:
    action: str  # allow / deny / reject / limit
    direction: str = "in"
    interface: str = ""
    proto: str = "any"
    src: str = "any"
    sport: str = "any"
    dst: str = "any"
    dport: str = "any"
    position: int = 0  # 0 append, N insert before rule N, -1 prepend
    delete: bool = False


def _bad(what: str) -> UsageError:
    return UsageError(f"what-if cannot translate this ufw command: {what}", HINT)


def _port(text: str) -> str:
    """ufw's port syntax: 22, 80,443, 6000:6007 (names and app profiles need ufw's databases)."""
    for p in text.split(","):
        if not re.fullmatch(r"\d+(:\d+)?", p) or not all(0 < int(x) < 65536 for x in p.split(":")):
            raise _bad(f"port '{text}' (service and application names are not supported: give the number)")
    return text


def _addr(text: str) -> str:
    if text == "any":
        return text
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _bad(f"address '{text}'") from None
    # ufw normalizes: a host's /32 or /128 is written without it, host bits are cleared
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def parse(args: list[str]) -> Rule:
    """ufw's rule syntax (the subset what-if translates); UsageError names what it does not."""
    a = list(args)
    if not a:
        raise _bad("no rule given")
    if a[0].startswith("-"):
        raise _bad(f"unsupported option {a[0]}")
    position, delete = 0, False
    if a[0] == "insert":
        if len(a) < 2 or not a[1].isdigit() or int(a[1]) < 1:
            raise _bad("`insert` needs a rule number (1 or more)")
        position, a = int(a[1]), a[2:]
    elif a[0] == "prepend":
        position, a = -1, a[1:]
    elif a[0] == "delete":
        if len(a) > 1 and a[1].isdigit():
            raise _bad("`delete NUM` (give the rule itself: ufw delete allow ...)")
        delete, a = True, a[1:]
    if not a or a[0] not in ACTIONS:
        raise _bad(f"'{a[0] if a else ''}' (not allow, deny, reject or limit)" if a else "no action given")
    action, a = a[0], a[1:]
    kw: dict[str, str] = {}
    if a and a[0] in ("in", "out"):
        kw["direction"], a = a[0], a[1:]
    if len(a) >= 2 and a[0] == "on":
        kw["interface"], a = a[1], a[2:]
    if len(a) == 1 and a[0] not in ("from", "to", "proto"):  # the short form: PORT[/PROTO]
        port, _, proto = a[0].partition("/")
        if proto and proto not in ("tcp", "udp"):
            raise _bad(f"protocol '{proto}'")
        if ("," in port or ":" in port) and not proto:
            raise _bad("multiple ports need a protocol (ufw: Must specify 'tcp' or 'udp' with multiple ports)")
        return Rule(action, dport=_port(port), proto=proto or "any", position=position, delete=delete, **kw)
    last = ""
    while a:
        word = a.pop(0)
        if word in ("from", "to", "proto", "port") and not a:
            raise _bad(f"'{word}' needs a value")
        if word == "proto":
            if a[0] not in ("tcp", "udp"):
                raise _bad(f"protocol '{a[0]}' (what-if translates tcp and udp)")
            kw["proto"] = a.pop(0)
        elif word in ("from", "to"):
            kw["src" if word == "from" else "dst"], last = _addr(a.pop(0)), word
        elif word == "port" and last:
            kw["sport" if last == "from" else "dport"] = _port(a.pop(0))
        else:
            raise _bad(f"'{word}' (unsupported here: app profiles, log, comment, route rules)")
    if kw.get("proto", "any") == "any" and any("," in kw.get(k, "") or ":" in kw.get(k, "") for k in ("dport", "sport")):
        raise _bad("multiple ports need a protocol (ufw: Must specify 'tcp' or 'udp' with multiple ports)")
    versions = {ipaddress.ip_network(kw[k]).version for k in ("src", "dst") if kw.get(k, "any") != "any"}
    if len(versions) > 1:
        raise _bad("source and destination of different IP versions")
    return Rule(action, position=position, delete=delete, **kw)


def format_rule(r: Rule) -> str:
    """UFWRule.format_rule: the rule's part after `-A CHAIN`."""
    out = []
    if r.interface:
        out.append(("-i " if r.direction == "in" else "-o ") + r.interface)
    multi = any("," in p or ":" in p for p in (r.dport, r.sport))
    if r.proto == "any":
        out.append("-p all")
    else:
        out.append("-p " + r.proto)
        if multi:
            if r.dport != "any" and r.sport != "any":
                out.append(f"-m multiport --dports {r.dport} -m multiport --sports {r.sport}")
            elif r.dport != "any":
                out.append(f"-m multiport --dports {r.dport}")
            else:
                out.append(f"-m multiport --sports {r.sport}")
    if r.dst != "any":
        out.append("-d " + r.dst)
    if not multi and r.dport != "any":
        out.append("--dport " + r.dport)
    if r.src != "any":
        out.append("-s " + r.src)
    if not multi and r.sport != "any":
        out.append("--sport " + r.sport)
    out.append("-j " + ACTIONS[r.action] + (" --reject-with tcp-reset" if r.action == "reject" and r.proto == "tcp" else ""))
    return " ".join(out)


def snippets(rule: str, prefix: str) -> list[str]:
    """backend_iptables._get_rules_from_formatted (without logging): the lines one rule becomes."""
    if "-p all " in rule:
        if "port " in rule:
            tcp = rule.replace("-p all ", "-p tcp ")
            tcp = re.sub(r"-j REJECT\b", "-j REJECT --reject-with tcp-reset", tcp)
            lines = [tcp, rule.replace("-p all ", "-p udp ")]
        else:
            lines = [rule.replace("-p all ", "")]
    else:
        lines = [rule]
    out = []
    for s in lines:
        if " -j LIMIT" in s:
            out += [s.replace(" -j LIMIT", " -m conntrack --ctstate NEW -m recent --set"),
                    s.replace(" -j LIMIT", " -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6"
                              f" -j {prefix}-user-limit"),
                    s.replace(" -j LIMIT", f" -j {prefix}-user-limit-accept")]
        else:
            out.append(s)
    return out


def tuple_line(r: Rule, v6: bool) -> str:
    """user.rules' `### tuple ###` line for the rule."""
    anyw = "::/0" if v6 else "0.0.0.0/0"
    ifaces = f"{r.direction}_{r.interface}" if r.interface else r.direction
    return (f"### tuple ### {r.action} {r.proto} {r.dport} {r.dst if r.dst != 'any' else anyw} {r.sport} "
            f"{r.src if r.src != 'any' else anyw} {ifaces}")


def _chain_lines(save: str, chain: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith(f"-A {chain} ")]


def _norm(line: str) -> str:
    """A listed line as ufw wrote it: iptables-save adds `-m tcp`/`-m udp` and `/32` masks."""
    line = re.sub(r" -m (tcp|udp)\b", "", line)
    return re.sub(r"(\d+\.\d+\.\d+\.\d+)/32\b", r"\1", line)


def tuples(lines: list[str], prefix: str) -> list[int]:
    """The first line (0-based) of each ufw rule in a listed user chain: a rule's tcp/udp pair,
    its limit triple and a logged rule's jump to the logging chain belong together."""
    starts, i = [], 0
    norm = [_norm(x) for x in lines]
    while i < len(norm):
        starts.append(i)
        cur = norm[i]
        if f"-j {prefix}-user-logging-" in cur and i + 1 < len(norm):
            i += 1
            cur = norm[i]
        if "-m recent --set" in cur and i + 2 < len(norm):
            i += 2
            cur = norm[i]
        nxt = norm[i + 1] if i + 1 < len(norm) else ""
        if " -p tcp " in cur + " " and nxt == re.sub(r" --reject-with tcp-reset", "", cur).replace(" -p tcp ", " -p udp "):
            i += 1
        i += 1
    return starts


def _has_chain(save: str, chain: str) -> bool:
    return f":{chain} " in save


def translate(r: Rule, t: Target) -> tuple[list[Step], list[str]]:
    if not _has_chain(t.ipt4, "ufw-user-input") and not _has_chain(t.ipt6, "ufw6-user-input"):
        raise UsageError("the target's firewall has no ufw chains (ufw-user-input): ufw is not managing it",
                         "give the iptables/nft commands to try, or what-if a target where ufw is enabled")
    version = next((ipaddress.ip_network(a).version for a in (r.src, r.dst) if a != "any"), 0)
    suffix = "input" if r.direction == "in" else "output"
    steps: list[Step] = []
    notes: list[str] = []
    v4_tuples = len(tuples(_chain_lines(t.ipt4, f"ufw-user-{suffix}"), "ufw"))
    fams = [(4, "ufw", t.ipt4, t.ipt4_tool), (6, "ufw6", t.ipt6, t.ipt6_tool)]
    for fam, prefix, save, tool in fams:
        if version and fam != version:
            continue
        chain = f"{prefix}-user-{suffix}"
        if not _has_chain(save, chain):
            if version == fam or fam == 4:
                raise UsageError(f"the target's firewall has no {chain} chain: ufw does not manage IPv{fam} there",
                                 "what-if a target where ufw is enabled for that family")
            notes.append(f"no {chain} in the target (as with ufw's IPV6=no): no IPv6 rule applied")
            continue
        lines = [f"{chain} {s}" for s in snippets(format_rule(r), prefix)]
        notes.append(f"user.rules{'6' if fam == 6 else ''}: {tuple_line(r, fam == 6)}")
        if r.action == "limit" and not r.delete and not _has_chain(save, f"{prefix}-user-limit"):
            steps += [Step(f"{tool} -N {prefix}-user-limit", (tool, "-N", f"{prefix}-user-limit")),
                      Step(f"{tool} -A {prefix}-user-limit -j REJECT", (tool, "-A", f"{prefix}-user-limit", "-j", "REJECT")),
                      Step(f"{tool} -N {prefix}-user-limit-accept", (tool, "-N", f"{prefix}-user-limit-accept")),
                      Step(f"{tool} -A {prefix}-user-limit-accept -j ACCEPT",
                           (tool, "-A", f"{prefix}-user-limit-accept", "-j", "ACCEPT"))]
            notes.append(f"the target had no {prefix}-user-limit chains: made as ufw's user.rules writes them")
        if r.delete:
            for line in lines:
                spec = line.split()
                steps.append(Step(f"{tool} -D {line}", (tool, "-D", *spec), check=(tool, "-C", *spec),
                                  absent=f"ufw would say: Could not delete non-existent rule ({line})"))
            continue
        at = _position(r.position, fam, save, chain, prefix, v4_tuples, notes)
        for k, line in enumerate(lines):
            spec = line.split()
            if at is None:
                steps.append(Step(f"{tool} -A {line}", (tool, "-A", *spec)))
            else:
                steps.append(Step(f"{tool} -I {chain} {at + k} {' '.join(spec[1:])}",
                                  (tool, "-I", chain, str(at + k), *spec[1:])))
    return steps, notes


def _position(position: int, fam: int, save: str, chain: str, prefix: str, v4_tuples: int,
              notes: list[str]) -> Optional[int]:
    """The iptables line a ufw rule goes to: None appends; `insert N` counts rules as `ufw status
    numbered` does (IPv4 ones first, then IPv6), each rule's lines rebuilt from the listed chain."""
    if position == 0:
        return None
    if position == -1:
        return 1
    starts = tuples(_chain_lines(save, chain), prefix)
    n = position if fam == 4 else max(1, position - v4_tuples)
    if fam == 4 and position > v4_tuples:
        if position > v4_tuples + 1 and not _has_chain(save, chain.replace("ufw-", "ufw6-")):
            raise UsageError(f"ufw would say: Invalid position '{position}' (the target has {v4_tuples} IPv4 rules)",
                             "give a position among `ufw status numbered`'s")
        return None
    if n > len(starts):
        if fam == 6:
            return None
        raise UsageError(f"ufw would say: Invalid position '{position}'", "give a position among `ufw status numbered`'s")
    notes.append(f"insert {position}: before line {starts[n - 1] + 1} of {chain} (ufw's rule {n} there, counted "
                 "from the listed lines)")
    return starts[n - 1] + 1

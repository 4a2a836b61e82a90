"""Turn what `nft -a list ruleset` and `iptables-save` print into the frozen model.

Pure: text in, values out. The system layer runs the tools and hands their output here; the
tests feed the real captures under tests/data/ (scripts/capture-test-data). The parsers never
raise: on input they do not understand they return what they did understand.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from tracer.model import Backend, Chain, Rule, Ruleset, Table

# ---------------------------------------------------------------------------------------------
# nft -a list ruleset

# A quoted string (possibly unterminated): comments, log prefixes and interface names may hold
# `{`, `}` and `#`, so structure is only looked for outside these.
_QUOTED = re.compile(r'("(?:[^"\\]|\\.)*"?)')
# `counter packets 12 bytes 3456` -> `counter`, so rule texts do not change with traffic.
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
# The trailing comment of a listed object: `# handle 12`.
_HANDLE = re.compile(r"^\s*handle\s+(\d+)")
# `type filter hook input priority filter; policy accept;`, also with
# `devices = { eth0, eth1 }` or `device "eth0"` between hook and priority (netdev).
_HOOK = re.compile(r"\bhook\s+([\w-]+)")
_PRIORITY = re.compile(r"\bpriority\s+([^;]+)")
_POLICY = re.compile(r"\bpolicy\s+(\w+)")
# Chain-level lines that are not rules when listed without `-a` (no handle to tell them apart).
_CHAIN_ATTRS = ("comment ", "policy ", "flags ", "devices ")


@dataclass
class _ChainBuilder:
    name: str
    hook: Optional[str] = None
    priority: Optional[str] = None
    policy: Optional[str] = None
    rules: list[tuple[Optional[int], str]] = field(default_factory=list)


@dataclass
class _TableBuilder:
    family: str
    name: str
    chains: list[_ChainBuilder] = field(default_factory=list)


def _scan(line: str) -> tuple[str, str, int]:
    """Split a line into (code, trailing comment, brace balance of the code), quote-aware."""
    if '"' not in line and "{" not in line and "}" not in line:  # most rule lines: no char walk
        code, _, comment = line.partition("#")
        return code, comment, 0
    depth = 0
    quoted = False
    i = 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "#":
            return line[:i], line[i + 1 :], depth
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        i += 1
    return line, "", depth


def _rule_text(code: str) -> str:
    parts = _QUOTED.split(code)
    # Odd indexes are the quoted strings: a log prefix may well say "counter packets 1 bytes 2".
    for i in range(0, len(parts), 2):
        parts[i] = _COUNTER.sub("counter", parts[i])
    return "".join(parts).strip()


def _chain_header(chain: _ChainBuilder, code: str) -> None:
    # Sample: `type nat hook postrouting priority srcnat + 10; policy accept;`
    hook = _HOOK.search(code)
    priority = _PRIORITY.search(code)
    policy = _POLICY.search(code)
    chain.hook = hook.group(1) if hook else None
    chain.priority = priority.group(1).strip() if priority else None
    chain.policy = policy.group(1) if policy else None


def parse_nft_ruleset(text: str, managed: frozenset[tuple[str, str]] = frozenset()) -> Ruleset:
    """Parse the stdout of `nft -a list ruleset` (nft 1.0.6).

    Sample rule line: `iifname "lo" counter packets 0 bytes 0 accept # handle 2`.
    `managed` holds the (family, name) of tables iptables-nft owns (see `managed_tables`).
    """
    tables: list[_TableBuilder] = []
    table: Optional[_TableBuilder] = None
    chain: Optional[_ChainBuilder] = None
    skip = 0  # brace depth inside a block not modelled: set, map, flowtable, named objects
    pending = ""  # a statement whose braces are still open, e.g. a wrapped `elements = {`
    pending_depth = 0

    for raw in text.splitlines():
        code, comment, delta = _scan(raw)
        if skip:
            skip = max(skip + delta, 0)
            continue
        if pending:
            code, delta = pending + " " + code.strip(), pending_depth + delta
            pending, pending_depth = "", 0
        line = code.strip()
        if not line:
            continue
        if line.startswith("}"):
            if chain is not None:
                chain = None
            else:
                table = None
            continue
        if delta > 0 and line.endswith("{"):
            words = line[:-1].split()
            # A `table`/`chain` opener also ends the previous block, so input with a lost
            # closing brace still parses as well as it can.
            if len(words) == 3 and words[0] == "table":
                table, chain = _TableBuilder(words[1], words[2]), None
                tables.append(table)
            elif len(words) == 2 and words[0] == "chain" and table is not None:
                chain = _ChainBuilder(words[1])
                table.chains.append(chain)
            else:
                skip = delta
            continue
        if delta > 0:
            pending, pending_depth = line, delta
            continue
        if chain is None:
            continue  # table-level `flags dormant`, `comment "..."`, or noise
        handle = _HANDLE.match(comment)
        if handle is None and line.startswith("type ") and " hook " in line:
            _chain_header(chain, line)
        elif handle is None and line.startswith(_CHAIN_ATTRS):
            continue
        else:
            chain.rules.append((int(handle.group(1)) if handle else None, _rule_text(line)))

    return Ruleset(tuple(_freeze(t, managed) for t in tables))


def _freeze(t: _TableBuilder, managed: frozenset[tuple[str, str]]) -> Table:
    chains = tuple(
        Chain(
            family=t.family,
            table=t.name,
            name=c.name,
            hook=c.hook,
            priority=c.priority,
            policy=c.policy,
            rules=tuple(
                Rule(t.family, t.name, c.name, n, handle, text)
                for n, (handle, text) in enumerate(c.rules, start=1)
            ),
        )
        for c in t.chains
    )
    backend = Backend.IPTABLES_NFT if (t.family, t.name) in managed else Backend.NFT
    return Table(t.family, t.name, chains, backend)


# Sample: `# Warning: table ip filter is managed by iptables-nft, do not touch!`
_MANAGED = re.compile(r"\btable (\S+) (\S+) is managed by iptables-nft\b")


def managed_tables(stderr: str) -> frozenset[tuple[str, str]]:
    """The (family, name) of tables nft warns are managed by iptables-nft."""
    return frozenset((m.group(1), m.group(2)) for m in _MANAGED.finditer(stderr))


# ---------------------------------------------------------------------------------------------
# iptables-save / ip6tables-save

LEGACY_SAVE = {"ip": "iptables-legacy-save", "ip6": "ip6tables-legacy-save"}
# /proc/net/ip_tables_names lists the x_tables tables instantiated in a namespace: empty means
# no iptables-legacy rules at all, without running anything.
LEGACY_NAMES = {"ip": "ip_tables_names", "ip6": "ip6_tables_names"}


@dataclass(frozen=True)
class IptChain:
    name: str
    policy: Optional[str]  # "ACCEPT"/"DROP" for built-in chains, None for user chains ("-")
    rules: tuple[str, ...] = ()  # `-A CHAIN ...` lines exactly as printed (= `iptables -S`)


@dataclass(frozen=True)
class IptTable:
    name: str
    chains: tuple[IptChain, ...] = ()

    def chain(self, name: str) -> Optional[IptChain]:
        for c in self.chains:
            if c.name == name:
                return c
        return None


# `iptables-save -c` prefixes each rule with its counters: `[12:345] -A INPUT -i lo -j ACCEPT`.
_SAVE_COUNTERS = re.compile(r"^\[\d+:\d+\]\s*")


def parse_iptables_save(text: str) -> dict[str, IptTable]:
    """Parse `iptables-save` / `ip6tables-save` output (with or without `-c`), by table name.

    Sample lines: `*filter`, `:INPUT ACCEPT [0:0]`, `-A INPUT -i lo -j ACCEPT`, `COMMIT`.
    """
    tables: dict[str, dict[str, tuple[Optional[str], list[str]]]] = {}
    current: Optional[dict[str, tuple[Optional[str], list[str]]]] = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*") and line[1:].strip():
            current = tables.setdefault(line[1:].strip(), {})
        elif current is None:
            continue  # `# Generated by ...` comments, or text outside any table
        elif line == "COMMIT":
            current = None
        elif line.startswith(":"):
            words = line[1:].split()
            if words:
                policy = words[1] if len(words) > 1 and words[1] != "-" else None
                current[words[0]] = (policy, current.get(words[0], (None, []))[1])
        else:
            line = _SAVE_COUNTERS.sub("", line)
            words = line.split()
            if len(words) >= 2 and words[0] == "-A":
                current.setdefault(words[1], (None, []))[1].append(line)
    return {
        name: IptTable(
            name, tuple(IptChain(c, policy, tuple(rules)) for c, (policy, rules) in chains.items())
        )
        for name, chains in tables.items()
    }


def attach_iptables(ruleset: Ruleset, family: str, saved: dict[str, IptTable]) -> Ruleset:
    """Mark the tables of `saved` as iptables-nft and give their rules their `iptables -S` form.

    `family` is "ip" for iptables-save output, "ip6" for ip6tables-save. Rule i of a chain gets
    the i-th `-A` line of the same chain; a chain whose rule counts differ (iptables-save stops
    at the first rule it cannot translate) keeps ipt=None rather than guessing.
    """
    tables = []
    for t in ruleset.tables:
        ipt = saved.get(t.name) if t.family == family else None
        if ipt is None:
            tables.append(t)
            continue
        chains = tuple(_attach_chain(c, ipt.chain(c.name)) for c in t.chains)
        tables.append(dataclasses.replace(t, chains=chains, backend=Backend.IPTABLES_NFT))
    return Ruleset(tuple(tables))


def _attach_chain(chain: Chain, ipt: Optional[IptChain]) -> Chain:
    if ipt is None or len(ipt.rules) != len(chain.rules):
        return chain
    rules = tuple(Rule(r.family, r.table, r.chain, r.number, r.handle, r.text, line) for r, line in zip(chain.rules, ipt.rules))
    return dataclasses.replace(chain, rules=rules)

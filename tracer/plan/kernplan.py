"""The kernel-log side of a run, computed as data (no I/O): iptables-legacy tables in the model,
the LOG evidence rules (`--log`) and the sysctls the kernel log needs. Legacy chains are traced
by the trace bit fwtrace's nft chain sets (see kern_plan), not by TRACE rules.

Only used when the target has iptables-legacy rules or `--log` was given: the default
(nft-only) path stays one nft batch and one trace socket.

Every rule fwtrace inserts carries the run id (`-m comment --comment fwtrace:<runid>`, or the
LOG prefix `fwtrace:<runid>:<n> `), is inserted at the top of its chain and never decides
anything (TRACE and LOG are non-terminal), and is taken back with `-D` and the same spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tracer.model import Backend, Chain, PacketSpec, Proto, Rule, Ruleset, Table
from tracer.ruleset import LEGACY_NAMES, LEGACY_SAVE, IptTable  # noqa: F401  re-exported
from tracer.ruleset.hooks import BUILTIN_HOOKS, legacy_priority  # noqa: F401  legacy_priority re-exported
from tracer.ruleset.snapshot import legacy_tables  # noqa: F401  re-exported

LEGACY_CMD = {"ip": "iptables-legacy", "ip6": "ip6tables-legacy"}
NFT_IPT_CMD = {"ip": "iptables-nft", "ip6": "ip6tables-nft"}
# "Bad rule (does a matching rule exist in that chain?)": -D of a rule that is already gone.
IPT_GONE = ("Bad rule", "does a matching rule exist", "No chain/target/match by that name")
NF_LOG_SYSCTL = {"ip": "net.netfilter.nf_log.2", "ip6": "net.netfilter.nf_log.10"}
NF_LOGGER = {"ip": "nf_log_ipv4", "ip6": "nf_log_ipv6"}
LOGGER_MODULE = "nf_log_syslog"  # both loggers (Linux 5.12+; nf_log_ipv4/ipv6 before)
ALL_NETNS = "net.netfilter.nf_log_all_netns"
LOG_INVALID = "net.netfilter.nf_conntrack_log_invalid"
LOG_RATE = "50/second"


# ---------------------------------------------------------------------------------------------
# Instrumentation


@dataclass(frozen=True)
class LogPoint:
    """Where one of this run's LOG rules sits."""

    family: str
    table: str
    chain: str
    legacy: bool


def log_prefix(run_id: str, n: int) -> str:
    # x_tables allows 29 characters of prefix: "fwtrace:1a2b3c4d:12 " is 20.
    return f"fwtrace:{run_id}:{n} "


@dataclass(frozen=True)
class RuleEdit:
    """One iptables command that inserts a rule of the plan, and the one that deletes it again
    (the run makes it as one journaled change)."""

    what: str
    apply: tuple[str, ...]
    undo: tuple[str, ...]
    input: str = ""


@dataclass(frozen=True)
class KernPlan:
    run_id: str
    edits: tuple[RuleEdit, ...] = ()
    offsets: dict[tuple[str, str, str], int] = field(default_factory=dict)
    log_points: dict[int, LogPoint] = field(default_factory=dict)
    families: tuple[str, ...] = ()  # nf_log families the kernel log is needed for
    kmsg: bool = True  # read /dev/kmsg (legacy TRACE, LOG rules, conntrack INVALID lines)
    nflog_group: Optional[int] = None  # the NFLOG rules' group, read over netlink
    # the chains the plan was made from (listed before the run): the kernel log's rule numbers
    # and legacy verdicts are read against them
    ruleset: Ruleset = field(default_factory=Ruleset)

    @property
    def rules(self) -> list[str]:
        return [" ".join(c.apply) for c in self.edits]

    @property
    def legacy_edits(self) -> bool:
        return any(c.apply[0] in LEGACY_CMD.values() for c in self.edits)


def _mask(spec: PacketSpec) -> str:
    return "/32" if spec.family == 4 else "/128"


def _l4(spec: PacketSpec, sports: str, dport: bool) -> list[str]:
    if spec.proto is Proto.ICMP:
        if spec.family == 4:
            return ["-p", "icmp", "--icmp-type", "echo-request"]
        return ["-p", "ipv6-icmp", "--icmpv6-type", "echo-request"]
    m = ["-p", spec.proto.value, "--sport", sports]
    return m + (["--dport", str(spec.dport)] if dport else [])


def trace_match(spec: PacketSpec) -> list[str]:
    """Exactly this probe packet: addresses, ports, and its random IPv4 id / IPv6 flow label.

    u32 reads 4 bytes at the offset: bytes 2-5 of an IPv4 header end with the id; bytes 0-3 of
    an IPv6 header end with the 20-bit flow label.
    """
    u32 = f"2&0xFFFF={spec.ident}" if spec.family == 4 else f"0&0xFFFFF={spec.ident}"
    return ["-s", f"{spec.src}{_mask(spec)}", "-d", f"{spec.dst}{_mask(spec)}", *_l4(spec, str(spec.sport), True),
            "-m", "u32", "--u32", u32]


def log_match(specs: list[PacketSpec]) -> list[str]:
    """The probes' source side and their IPv4 ids / IPv6 flow labels: NAT may change the
    destination before a later chain, never these. Pinning the ident keeps look-alike traffic
    of the same source (other ids) out of the rule, so it cannot use up the rule's rate limit
    before the probe arrives (seen on a slow machine under a flood). u32 takes at most 10
    values in a list; more probes share a range of ids, still far narrower than the source."""
    s = specs[0]
    lo, hi = min(x.sport for x in specs), max(x.sport for x in specs)
    idents = sorted({x.ident for x in specs})
    values = ",".join(map(str, idents)) if len(idents) <= 10 else f"{idents[0]}:{idents[-1]}"
    u32 = f"2&0xFFFF={values}" if s.family == 4 else f"0&0xFFFFF={values}"
    return ["-s", f"{s.src}{_mask(s)}", *_l4(s, str(lo) if lo == hi else f"{lo}:{hi}", False), "-m", "u32", "--u32", u32]


def _ipt(cmd: str, table: str, op: str, chain: str, rest: list[str]) -> tuple[str, ...]:
    pos = ["1"] if op == "-I" else []
    return (cmd, "-w", "-t", table, op, chain, *pos, *rest)


def nflog_group(run_id: str) -> int:
    """A group of the run's own (group 0 is where nf_log's nfnetlink_log backend sends)."""
    return 0x8000 | (int(run_id, 16) & 0x7FFF)


def kern_plan(run_id: str, specs: list[PacketSpec], ruleset: Ruleset, log: str,
              nft_chains: Optional[frozenset[tuple[str, str, str]]] = None, trace_bit: bool = True,
              legacy_raw: bool = False) -> KernPlan:
    """With `log` ("nflog" or "kmsg"), an NFLOG or LOG rule at the top of every chain of the
    probe's family that iptables manages (legacy and iptables-nft). Native nft chains get none:
    a LOG rule there could only be undone by a handle known after it exists, and nftrace already
    reports every rule the packet meets in them.

    Nothing may outlive the run. iptables-nft-save prints every built-in chain of a table, but
    nf_tables holds only those made so far, and `iptables-nft -I` into a missing one creates it
    (and `-D` leaves it): so iptables-nft chains get a rule only when they are in `nft_chains`
    (the chains nf_tables lists; a chain that does not exist sees no packet anyway).

    Legacy chains are traced by the trace bit fwtrace's own nft chain sets (`trace_bit`, the
    default): ip_tables logs `TRACE: table:chain:rule:N` for any skb with it, as `-j TRACE` would,
    and no x_tables raw table is instantiated (one cannot be unregistered). Only without that
    route, and only when the legacy raw table already exists (`legacy_raw`), TRACE rules go there."""
    family = specs[0].nfproto
    comment = ["-m", "comment", "--comment", f"fwtrace:{run_id}"]
    edits: list[RuleEdit] = []
    offsets: dict[tuple[str, str, str], int] = {}
    points: dict[int, LogPoint] = {}
    legacy = [t for t in ruleset.tables if t.backend is Backend.IPTABLES_LEGACY and t.family == family]
    cmd = LEGACY_CMD[family]

    group = nflog_group(run_id) if log == "nflog" else None
    if log:
        limit = ["-m", "limit", "--limit", LOG_RATE, "--limit-burst", "50"]
        for t in [t for t in ruleset.tables if t.family == family and t.backend is not Backend.NFT]:
            tool = cmd if t.backend is Backend.IPTABLES_LEGACY else NFT_IPT_CMD[family]
            for c in t.chains:
                if t.backend is Backend.IPTABLES_NFT and nft_chains is not None and (family, t.name, c.name) not in nft_chains:
                    continue
                n = len(points) + 1
                points[n] = LogPoint(family, t.name, c.name, t.backend is Backend.IPTABLES_LEGACY)
                if group is not None:
                    target = ["-j", "NFLOG", "--nflog-group", str(group), "--nflog-prefix", log_prefix(run_id, n).strip(),
                              "--nflog-size", "128"]
                else:
                    target = ["-j", "LOG", "--log-prefix", log_prefix(run_id, n)]
                # The comment makes the rule fwtrace's in any listing (an xt LOG target's prefix
                # is invisible to nft): the cleanup proof of a concurrent run skips it by it.
                rest = [*log_match(specs), *limit, *comment, *target]
                edits.append(RuleEdit(f"{tool} -t {t.name} {target[1]} rule in {c.name}", _ipt(tool, t.name, "-I", c.name, rest),
                                      _ipt(tool, t.name, "-D", c.name, rest)))
                if t.backend is Backend.IPTABLES_LEGACY:
                    offsets[(family, t.name, c.name)] = offsets.get((family, t.name, c.name), 0) + 1

    if legacy and not trace_bit and legacy_raw:
        for spec in specs:
            rest = [*trace_match(spec), *comment, "-j", "TRACE"]
            for chain in ("PREROUTING", "OUTPUT"):
                edits.append(RuleEdit(f"{cmd} -t raw TRACE rule in {chain}", _ipt(cmd, "raw", "-I", chain, rest),
                                      _ipt(cmd, "raw", "-D", chain, rest)))
                offsets[(family, "raw", chain)] = offsets.get((family, "raw", chain), 0) + 1

    kmsg = bool(legacy) or log == "kmsg"
    return KernPlan(run_id, tuple(edits), offsets, points, (family,), kmsg, group, ruleset)


def own_handles(nft_listing: str, run_id: str) -> frozenset[tuple[str, str, int]]:
    """(family, table, handle) of the rules carrying this run's marks in `nft -a list ruleset`
    output: the LOG rules iptables-nft inserted, which nftrace reports like any other rule."""
    out = set()
    table = ("", "")
    for line in nft_listing.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "table":
            table = (words[1], words[2])
        elif f"fwtrace:{run_id}" in line and "# handle " in line:
            try:
                out.add((table[0], table[1], int(line.rsplit("# handle ", 1)[1].split()[0])))
            except (ValueError, IndexError):
                pass
    return frozenset(out)


def iptables_nft_tables(family: str, saved: dict[str, IptTable]) -> tuple[Table, ...]:
    """The tables of `iptables-nft-save` output as model tables (backend IPTABLES_NFT), chains and
    rule texts only: where `--log` puts its rules before the run, with no full nft listing."""
    tables = []
    for name, t in saved.items():
        chains = tuple(
            Chain(family, name, c.name, BUILTIN_HOOKS.get(c.name) if c.policy is not None else None, None,
                  c.policy.lower() if c.policy else None,
                  tuple(Rule(family, name, c.name, i, None, line, line) for i, line in enumerate(c.rules, 1)))
            for c in t.chains
        )
        tables.append(Table(family, name, chains, Backend.IPTABLES_NFT))
    return tuple(tables)


def plan_to_json(kp: KernPlan) -> dict[str, object]:
    """What replaying a bundle needs of the plan: where the LOG/NFLOG rules were, and how many
    rules fwtrace put at the top of each legacy chain (the plan itself came from chains listed
    before the run, which a bundle does not hold)."""
    return {
        "offsets": [[f, t, c, n] for (f, t, c), n in sorted(kp.offsets.items())],
        "log_points": {str(n): [p.family, p.table, p.chain, p.legacy] for n, p in sorted(kp.log_points.items())},
        "families": list(kp.families),
        "kmsg": kp.kmsg,
        "nflog_group": kp.nflog_group,
        "rules": kp.rules,
    }


def plan_from_json(doc: dict[str, object]) -> KernPlan:
    offsets = {(str(f), str(t), str(c)): int(n) for f, t, c, n in doc.get("offsets", [])}  # type: ignore[attr-defined]
    points = {int(n): LogPoint(str(f), str(t), str(c), bool(lg))
              for n, (f, t, c, lg) in doc.get("log_points", {}).items()}  # type: ignore[attr-defined]
    group = doc.get("nflog_group")
    return KernPlan("", (), offsets, points, tuple(doc.get("families", ())),  # type: ignore[arg-type]
                    bool(doc.get("kmsg", True)), int(group) if group is not None else None)  # type: ignore[call-overload]

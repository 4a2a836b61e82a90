"""Frozen values shared by the pure core: rulesets (tracer/rules.py), probe packets, trace events, verdicts.

Everything here is built once at the edge (argparse output, parsed command output, netlink
bytes) and never mutated; the system layer only moves these values around.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Union

from tracer.rules import Backend, Chain, Rule, Ruleset, Table  # noqa: F401  (re-exported: part of the model)
from tracer.verdict import Action, RuleVerdict, TargetVerdict  # noqa: F401  (re-exported: part of the model)
from tracer.findings import INTENTS, SCOPES, Finding, Fix  # noqa: F401  (re-exported: part of the model; issue 19: no module over 400 lines)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Proto(str, enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"  # ICMP echo for IPv4, ICMPv6 echo for IPv6


class Verdict(str, enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------
# Probe packets


@dataclass(frozen=True)
class PacketSpec:
    """What to send: one probe packet, fully determined before anything is touched."""

    proto: Proto
    src: IPAddress
    dst: IPAddress
    sport: int  # for ICMP echo: the echo identifier
    dport: int  # for ICMP echo: the echo sequence number
    flags: str = "S"  # TCP flags in scapy's letters (S, A, SA, F, R, P, U)
    ident: int = 0  # IPv4 id / IPv6 flow label: marks this packet as ours in traces

    @property
    def family(self) -> int:
        return self.dst.version

    @property
    def nfproto(self) -> str:
        return "ip" if self.family == 4 else "ip6"

    def summary(self) -> str:
        if self.proto is Proto.ICMP:
            kind = "icmp" if self.family == 4 else "icmpv6"
            return f"{kind} echo-request {self.src} > {self.dst} id {self.sport} seq {self.dport}"
        s = f"{self.proto.value} {_hostport(self.src, self.sport)} > {_hostport(self.dst, self.dport)}"
        return s + (f" [{self.flags}]" if self.proto is Proto.TCP else "")


def _hostport(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


class Mode(str, enum.Enum):
    """How a probe is sent. A str enum: it prints, compares and serialises as its value."""

    INGRESS = "ingress"  # simulated: received on an interface as if from a remote client
    LOCAL = "local"  # from the target namespace itself (OUTPUT -> lo -> INPUT)
    FROM_NETNS = "from-netns"  # from a second namespace, a real host on a link
    FROM_SSH = "from-ssh"  # from a real client host over SSH, with plain sockets there

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProbeRequest:
    """A probe run as the command line asked for it, validated."""

    dport: int
    proto: Proto = Proto.TCP
    flags: str = "S"
    dst: Optional[IPAddress] = None
    src: Optional[IPAddress] = None
    sport: Optional[int] = None
    count: int = 1
    netns: Optional[str] = None
    from_netns: Optional[str] = None
    from_ssh: Optional[str] = None  # ssh://[user@]host[:port]: the client side runs there
    timeout: float = 1.0
    ipv6: bool = False
    log: str = ""  # "nflog" / "kmsg": also log the probes with temporary NFLOG / LOG rules
    via: Optional[str] = None  # simulated ingress: the interface the probe arrives on
    local: bool = False  # send from the target namespace itself (OUTPUT -> lo -> INPUT)
    print_bpf: bool = False  # print the generated tc programs on stderr
    ebpf: str = "off"  # "auto" (the CLI's default): load the eBPF probes when a first pass leaves a fate unexplained; "on"; "off"
    both: bool = False  # --proto both: every packet sent as TCP (proto, flags) and as UDP, to the same port
    app: str = ""  # "ftp": a real control session, and a traced probe of each passive data port (tracer/pipeline/appsteps.py)
    app_user: str = "anonymous"
    app_password: str = "fwtrace@"

    @property
    def protos(self) -> tuple["Proto", ...]:
        return (Proto.TCP, Proto.UDP) if self.both else (self.proto,)

    @property
    def mode(self) -> "Mode":
        """How the command line asked the probe to be sent (a run may fall back to local)."""
        if self.from_netns is not None:
            return Mode.FROM_NETNS
        if self.from_ssh is not None:
            return Mode.FROM_SSH
        return Mode.LOCAL if self.local else Mode.INGRESS


# ---------------------------------------------------------------------------------------------
# Trace events


class EventKind(str, enum.Enum):
    RULE = "rule"  # a rule matched
    RETURN = "return"  # fell off the end of a regular chain back to its caller
    POLICY = "policy"  # fell off the end of a base chain: its policy decided
    LOG = "log"  # a kernel-log line (LOG target, legacy TRACE)
    CONNTRACK = "conntrack"  # a conntrack observation
    # eBPF (source "ebpf"): the kernel's own view, outside netfilter's rules
    DROP = "drop"  # skb:kfree_skb: the packet was freed, `reason` as the kernel names it
    SEND = "send"  # the stack sends a reply about the packet: tcp:tcp_send_reset, icmp:icmp_send
    CONSUME = "consume"  # skb:consume_skb: the stack took the packet without a drop reason
    STATE = "state"  # sock:inet_sock_set_state of the probe's flow
    HOOK = "hook"  # nf_hook_slow returned (kprobe/fentry): the hook's verdict


@dataclass(frozen=True)
class TraceEvent:
    """One step of one packet through netfilter, from whatever source saw it."""

    trace_id: int  # groups the events of one packet (nftrace id, or synthesized)
    kind: EventKind
    family: str  # "ip", "ip6", "inet", ...
    table: str
    chain: str
    handle: Optional[int] = None  # rule handle for RULE events
    verdict: Optional[str] = None  # "accept", "drop", "continue", "jump X", "goto X", "return"
    iif: Optional[str] = None
    oif: Optional[str] = None
    hook: Optional[str] = None  # hook name when the source knows it
    packet: Optional[bytes] = None  # network header + transport header as the hook saw them
    source: str = "nftrace"  # "nftrace", "kmsg" (kernel log: LOG, legacy TRACE, conntrack)
    text: str = ""  # free text (kernel-log line, conntrack message)
    number: Optional[int] = None  # rule number for sources that count rules (legacy TRACE)
    legacy: bool = False  # the table is an iptables-legacy (x_tables) one
    reason: Optional[str] = None  # eBPF drop reason as the running kernel spells it (NETFILTER_DROP)
    location: Optional[str] = None  # eBPF: the kernel function that dropped or replied
    # conntrack's view at this step (nftrace, Linux 6.16+): new, established, related, invalid,
    # untracked; None when the source does not say
    ct_state: Optional[str] = None
    ct_id: Optional[int] = None  # the packet's conntrack entry's id at this step (nftrace, Linux 6.16+)

    @property
    def action(self) -> Optional["RuleVerdict"]:
        """The verdict, typed: `jump X` is (JUMP, "X")."""
        return RuleVerdict.parse(self.verdict)

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {
            "kind": self.kind.value,
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "source": self.source,
        }
        for k in ("handle", "number", "verdict", "iif", "oif", "hook", "reason", "location", "ct_state"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.text:
            d["text"] = self.text
        if self.legacy:
            d["backend"] = Backend.IPTABLES_LEGACY.value
        return d


@dataclass(frozen=True)
class RuleRef:
    """The thing that decided a verdict: a rule, or a chain's policy (rule is None)."""

    family: str
    table: str
    chain: str
    rule: Optional[Rule] = None
    policy: Optional[str] = None
    backend: Backend = Backend.NFT

    @property
    def legacy(self) -> bool:
        return self.backend is Backend.IPTABLES_LEGACY

    @property
    def text(self) -> str:
        if self.rule is not None:
            return self.rule.display
        return f"policy {(self.policy or '?').upper()}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "rule",
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "rule_number": self.rule.number if self.rule else None,
            "handle": self.rule.handle if self.rule else None,
            "rule": self.text,
            "backend": self.backend.value,
        }


@dataclass(frozen=True)
class HookOutcome:
    """How one base chain the packet crossed let it go: every base chain of a hook runs in
    priority order, and an accept ends only its own chain, so each has its own outcome."""

    ref: RuleRef  # the rule (or policy) that ended the chain's walk: in a chain it jumped to, maybe
    hook: str
    priority: int
    verdict: Verdict
    base: str = ""  # the base chain itself ("": ref.chain); DOCKER-USER's rule ends FORWARD's walk

    @property
    def chain(self) -> str:
        return self.base or self.ref.chain

    def to_json(self) -> dict[str, object]:
        r = self.ref
        return {"family": r.family, "table": r.table, "chain": self.chain, "hook": self.hook, "priority": self.priority,
                "verdict": self.verdict.value, "rule_chain": r.chain, "rule_number": r.rule.number if r.rule else None,
                "rule": r.text, "backend": r.backend.value}


@dataclass(frozen=True)
class Step:
    """One line of the timeline: an event joined with the rule it refers to."""

    event: TraceEvent
    rule: Optional[Rule] = None

    def to_json(self) -> dict[str, object]:
        d = self.event.to_json()
        if self.rule is not None:
            d["rule_number"] = self.rule.number
            d["rule"] = self.rule.display
        return d


@dataclass(frozen=True)
class Reply:
    kind: str  # "syn-ack", "rst", "icmp 3/10 host-prohibited", "udp", "echo-reply", "none"
    summary: str = ""
    captured: bool = True  # False: known only from its trace through OUTPUT, never seen leaving

    @property
    def none(self) -> bool:
        return self.kind == "none"


@dataclass(frozen=True)
class RouteLookup:
    """One route lookup as the kernel made it (RTM_GETROUTE; tracer/diagnose/kernverdict.py)."""

    query: str  # `ip route get 192.0.2.1 from 203.0.113.5 iif eth0`
    error: Optional[str] = None  # errno name (EXDEV, EHOSTUNREACH, ENETUNREACH, EINVAL); None: a route
    dev: Optional[str] = None  # the interface it leaves by
    kind: str = ""  # unicast, local, ...

    def said(self) -> str:
        return f"`{self.query}`: " + (self.error or f"{self.kind or 'route'}" + (f" dev {self.dev}" if self.dev else ""))


@dataclass(frozen=True)
class AfterAccept:
    """What a real connection to a service that answered the SYN saw (from-netns and local probes):
    the service closing it at once, and who holds the socket (tracer/diagnose/service.py)."""

    seen: str  # "closed" (FIN before any data), "reset", "data", "open" (nothing within the wait)
    process: Optional[str] = None  # "pid 812 (sshd)"
    libwrap: Optional[bool] = None  # the process has libwrap mapped (/proc/PID/maps); None: not known
    decision: Optional[str] = None  # the hosts.allow/hosts.deny line that decides the client, in words
    denied: Optional[bool] = None  # True: TCP wrappers deny this client
    daemon: Optional[str] = None  # the name the process goes by in hosts.allow/deny (argv[0])

    def to_json(self) -> dict[str, object]:
        return {"seen": self.seen, "process": self.process, "libwrap": self.libwrap, "decision": self.decision,
                "denied": self.denied, "daemon": self.daemon}


@dataclass(frozen=True)
class KernelDrop:
    """The kernel, not a rule, dropped the probe (tracer/diagnose/kernverdict.py): which check, where, and
    the setting behind it, with the evidence the run used to say so."""

    reason: str  # the kernel's drop reason name (IP_RPFILTER), eBPF's or the one the evidence implies
    cause: str  # in words: "reverse-path filter"
    function: Optional[str] = None  # the kernel function that dropped it (eBPF), or that counts the counter
    setting: Optional[str] = None  # "net.ipv4.conf.eth0.rp_filter=1", "no route to 203.0.113.5"
    evidence: tuple[str, ...] = ()  # what said so: eBPF, counter deltas, route lookups, sysctls

    def to_json(self) -> dict[str, object]:
        return {"kind": "kernel", "reason": self.reason, "cause": self.cause, "function": self.function,
                "setting": self.setting, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class PacketResult:
    spec: PacketSpec
    verdict: Verdict
    decided_by: Optional[RuleRef]
    reply: Reply
    steps: tuple[Step, ...] = ()
    path: tuple[str, ...] = ()  # hooks met in order, e.g. ("prerouting", "input")
    reply_steps: tuple[Step, ...] = ()  # the reply's own way out, when it was traced
    conntrack: Optional[str] = None  # the flow's conntrack entry after the probe, "none" when absent
    hooks: tuple[HookOutcome, ...] = ()  # every base chain the probe crossed, in hook and priority order
    # The reply's own fate on its way out (OUTPUT, POSTROUTING): ACCEPT when it was captured or
    # its trace got through, DROP/REJECT when a chain dropped it, UNKNOWN when nothing says.
    reply_verdict: Verdict = Verdict.UNKNOWN
    reply_decided_by: Optional[RuleRef] = None
    reply_hooks: tuple[HookOutcome, ...] = ()
    # The kernel dropped it, not a rule (tracer/diagnose/kernverdict.py); `verdict` stays the firewall's own
    kernel: Optional[KernelDrop] = None
    kernel_checked: tuple[str, ...] = ()  # what was checked for a kernel drop (also when none was found)
    route_back: Optional[RouteLookup] = None  # the kernel's route back to the source, when it was asked
    after_accept: Optional[AfterAccept] = None  # a real connection after a SYN-ACK, when one was made
    target: Optional[TargetVerdict] = None  # SYNPROXY, NFQUEUE, TPROXY decided it (tracer/diagnose/targets.py)

    @property
    def reply_dropped(self) -> bool:
        return self.reply_verdict in (Verdict.DROP, Verdict.REJECT)

    @property
    def final_verdict(self) -> Verdict:
        """The probe's fate: the firewall's verdict, or DROP when the kernel dropped it."""
        if self.target is not None and self.target.verdict in ("accept", "drop"):
            return Verdict(self.target.verdict)
        return Verdict.DROP if self.kernel is not None else self.verdict

    def to_json(self) -> dict[str, object]:
        spec = self.spec
        return {
            "summary": spec.summary(),
            "probe": {"proto": spec.proto.value, "src": str(spec.src), "dst": str(spec.dst), "sport": spec.sport,
                      "dport": spec.dport, "flags": spec.flags, "ident": spec.ident},
            "verdict": self.target.verdict if self.target else self.final_verdict.value,
            "firewall_verdict": self.verdict.value,
            "decided_by": self.kernel.to_json() if self.kernel else {**self.target.to_json(), "rule": self.decided_by.to_json()}
            if self.target and self.decided_by else self.decided_by.to_json() if self.decided_by else None,
            "kernel_checked": list(self.kernel_checked),
            "after_accept": self.after_accept.to_json() if self.after_accept else None,
            "reply": self.reply.kind,
            "reply_summary": self.reply.summary,
            "path": list(self.path),
            "events": [s.to_json() for s in self.steps],
            "reply_events": [s.to_json() for s in self.reply_steps],
            "reply_verdict": self.reply_verdict.value,
            "reply_decided_by": self.reply_decided_by.to_json() if self.reply_decided_by else None,
            "hooks": [h.to_json() for h in self.hooks],
            "reply_hooks": [h.to_json() for h in self.reply_hooks],
            "conntrack": self.conntrack,
        }


@dataclass(frozen=True)
class Listener:
    """A listening (TCP) or bound (UDP) socket in the target namespace."""

    proto: Proto
    addr: IPAddress
    port: int
    v6only: bool = field(default=False, compare=False)
    inode: int = field(default=0, compare=False)  # the socket's inode (/proc/net/tcp), to find its process
    process: Optional[str] = field(default=None, compare=False)  # "pid 812 (sshd)", when looked up

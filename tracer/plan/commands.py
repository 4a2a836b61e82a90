"""What the probe pipeline (tracer/pipeline/probe.py) asks of the system, as data.

The pipeline yields one of these and receives the result named in its docstring; tracer/pipeline/driver.py
carries them out, the unit tests answer them from a script. Every command runs in the target
namespace (entered once, by the driver) unless it names another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Optional, TypeVar, Union

from tracer.model import IPAddress, PacketSpec, TraceEvent
from tracer.packet import Headers
from tracer.ruleset.snapshot import ChainKey
from tracer.plan.proof import Scope
from tracer.plan.records import Undo
from tracer.plan.commands_actions import AcquireShared, Action, Finished, ProbesSent, RunArgv, SetSysctl  # noqa: F401  (issue 19: no module over 400 lines)

if TYPE_CHECKING:  # the default nft-only path never loads the kernel-log and ingress modules
    from tracer.inject.ingress import Route
    from tracer.plan.kernplan import KernPlan


class Command:
    """Base of everything the pipeline can ask for."""


T = TypeVar("T")
Steps = Generator[Command, Any, T]  # a pipeline step: yields commands, is sent their results, returns T


def drive(steps: Steps[T], execute: Callable[[Command], Any]) -> T:
    """Run a pipeline: carry out each command, send back its result, or throw its exception in
    (so the pipeline's `finally` can still ask for its cleanup). Returns the pipeline's value."""
    try:
        cmd = next(steps)
        while True:
            try:
                result = execute(cmd)
            except BaseException as e:
                cmd = steps.throw(e)
            else:
                cmd = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# --- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TakeSnapshot(Command):
    """The whole ruleset -> snapshot.Snapshot (evidence bundles, and the before/after diff)."""


@dataclass(frozen=True)
class SaveLegacy(Command):
    """iptables-legacy-save output of each family with x_tables tables -> dict[str, str]."""


@dataclass(frozen=True)
class ListAddresses(Command):
    """`ip -j addr show` (in namespace `netns`, None: the target) -> its JSON text."""

    netns: Optional[str] = None


@dataclass(frozen=True)
class ListBaseChains(Command):
    """`nft list chains` (chains without their rules: cheap on any ruleset) -> its text, "" when
    nft cannot list this ruleset (the met chains' listing reports that later)."""


@dataclass(frozen=True)
class RouteBack(Command):
    """The route from the target back to `to` (from the local address `local`) -> Optional[Route];
    `netns`: the route of that namespace instead (--from-netns: the sender's way to the target)."""

    to: IPAddress
    local: Optional[IPAddress] = None
    netns: Optional[str] = None


@dataclass(frozen=True)
class StatefulFacts(Command):
    """The target's stateful objects as listed -> StatefulTexts (tracer/plan/stateful.py parses them)."""


@dataclass(frozen=True)
class StatefulTexts:
    recent: tuple[str, ...]  # the names in /proc/net/xt_recent
    sets: str  # `nft -t list sets` and `nft -t list meters`
    spent: tuple[str, ...]  # the stateful.SPENT kinds the nf_tables rules use (tracer/system/nlrules.py)


@dataclass(frozen=True)
class Notice(Command):
    """Say this on stderr now, before the probes go out (a warning) -> None."""

    text: str


@dataclass(frozen=True)
class Neighbour(Command):
    """Who answers for `addr` on `dev` in namespace `netns` (None: the target): a usable
    neighbour entry's link-layer address, else the one that answered one ARP request or
    neighbour solicitation -> Optional[str] (None: nobody answered; "?" an answer without one)."""

    addr: IPAddress
    dev: str
    netns: Optional[str] = None


@dataclass(frozen=True)
class Checkpoint(Command):
    """Fault injection for the tests: the driver dies here by SIGKILL when told to -> None."""

    phase: str


@dataclass(frozen=True)
class BuildPackets(Command):
    """The probes' bytes -> tuple[bytes, ...] (bad input fails here, before anything changes)."""

    specs: tuple[PacketSpec, ...]


@dataclass(frozen=True)
class IptSave(Command):
    """iptables-nft-save output of one family -> str."""

    family: str


@dataclass(frozen=True)
class ReadSysctl(Command):
    """A sysctl's value -> Optional[str]; `home`: of the initial namespace (a global switch)."""

    key: str
    home: bool = False


@dataclass(frozen=True)
class LoadModule(Command):
    """Load a kernel module if the kernel has modules and not this one -> bool (loaded now);
    `keep`: sysctls its load may change, put back (system.load_module)."""

    name: str
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class InInitialNetns(Command):
    """Does fwtrace itself run in the initial namespace? -> bool."""


@dataclass(frozen=True)
class LegacyHasRaw(Command):
    """Has the family an x_tables raw table yet? -> bool."""

    family: str


@dataclass(frozen=True)
class ListChains(Command):
    """`nft -a list chain` of each key, concatenated -> str."""

    keys: tuple[ChainKey, ...]


@dataclass(frozen=True)
class Generation(Command):
    """The nf_tables ruleset generation -> int."""


@dataclass(frozen=True)
class MetChains(Command):
    """The chains the probes met, listed now, plus the legacy save from before -> snapshot.Snapshot."""

    keys: tuple[ChainKey, ...]
    legacy_saved: dict[str, str] = field(default_factory=dict)
    # The rule handles the report will show, per chain: long chains then hold only those rules
    # (tracer/system/sparse.py); None lists every rule.
    wanted: Optional[dict[ChainKey, frozenset[int]]] = None


@dataclass(frozen=True)
class FilterView(Command):
    """The tables on the input and forward hooks, for near misses (listing.filter_view), plus the
    legacy save from before -> snapshot.Snapshot."""

    legacy_saved: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NftTables(Command):
    """Every nf_tables table over netlink (tracer/collect/tables.py) -> dict "table F N" -> content."""


@dataclass(frozen=True)
class ProofListing(Command):
    """The objects of a cleanup-proof scope as they are now (tracer/plan/proof.py) -> dict name ->
    content. `legacy_saved`: iptables-legacy-save outputs already read, not read again."""

    scope: Scope
    legacy_saved: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SharedHeld(Command):
    """Is this run still registered as a user of the global switch `key`? -> bool"""

    key: str
    run_id: str


@dataclass(frozen=True)
class Describe(Command):
    """A captured reply in words -> str."""

    data: bytes


@dataclass(frozen=True)
class RpFilter(Command):
    """Would rp_filter on `via` drop the probe, given the route back? -> bool."""

    via: str
    back: Optional[Route]


@dataclass(frozen=True)
class Listeners(Command):
    """The sockets listening in the target -> tuple[Listener, ...]; those on `ports` with the
    process that holds them (pid, command)."""

    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class ConnectCheck(Command):
    """A real TCP connection from namespace `netns` (None: the target) to dst:dport, then a short
    wait: "closed" (FIN before any data), "reset", "data", "open" (nothing), or "failed: why" -> str."""

    netns: Optional[str]
    dst: IPAddress
    dport: int
    wait: float = 0.5


@dataclass(frozen=True)
class ProcessFacts(Command):
    """Of process `pid`: (its names: comm and argv[0] basename, libwrap mapped?, hosts.allow text,
    hosts.deny text as the process sees them, /proc/PID/root/etc) -> tuple."""

    pid: int


@dataclass(frozen=True)
class SelinuxFacts(Command):
    """(/sys/fs/selinux/enforce or None, `semanage port -l`, AVC lines, where they came from) -> tuple."""


@dataclass(frozen=True)
class ReadCounters(Command):
    """The target's SNMP and conntrack counter files (kernverdict.COUNTER_FILES) -> dict[str, str]
    (the files that exist)."""


@dataclass(frozen=True)
class KernelChecks(Command):
    """The sysctls `keys`, the kernel's input route lookup of a packet from `src` to `dst` arriving
    on `iif` (None: not asked) and the lookup back to `src` -> (dict[str, Optional[str]],
    Optional[kernverdict.RouteLookup], Optional[kernverdict.RouteLookup])."""

    src: IPAddress
    dst: IPAddress
    iif: Optional[str]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Conntrack(Command):
    """The probe flow's conntrack entry in words, or "none" -> str."""

    spec: PacketSpec


# --- changing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change(Command):
    """One change to the system (the only thing "change" means in fwtrace): journal `undo`, then
    carry out `action` -> the action's result. `atomic`: a failed action changed nothing, so its
    undo must not run (it might remove somebody else's thing)."""

    undo: Undo
    action: Action
    atomic: bool = False


# --- the exchange -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Begin(Command):
    """Open the trace socket and the run's journal -> None (from now on, changes are undone)."""


@dataclass(frozen=True)
class OpenPort(Command):
    """Build the simulated-ingress port on `via` -> "" when open, else why not (then whatever
    part of it was made is already undone)."""

    specs: tuple[PacketSpec, ...]
    via: str
    back: Optional[Route]


@dataclass(frozen=True)
class OpenInjector(Command):
    """Open the raw-socket injector in namespace `netns` (None: the target), which is entered
    once for it -> the source address it would send to `towards` from (None when not asked;
    EnvironmentProblem when there is no route)."""

    netns: Optional[str]
    towards: Optional[IPAddress] = None


@dataclass(frozen=True)
class OpenRemote(Command):
    """--from ssh://: start the client side on the client host over SSH -> its `ip -j addr`
    listing ("" when it has no `ip`). Its Send requests the probe there (plain sockets)."""

    url: str
    timeout: float


@dataclass(frozen=True)
class RemoteRoute(Command):
    """--from ssh://: the source address the client host would use towards `towards`
    (EnvironmentProblem when it has no route)."""

    towards: IPAddress


@dataclass(frozen=True)
class ClientSaw(Command):
    """--from ssh://: what the client host's socket saw of this probe -> (kind, text), once known."""

    spec: PacketSpec


@dataclass(frozen=True)
class OpenKernelSources(Command):
    """Open /dev/kmsg and the NFLOG socket the plan reads, before its rules exist -> None."""

    plan: KernPlan


@dataclass(frozen=True)
class Send(Command):
    """Send one probe -> the monotonic time it left."""

    spec: PacketSpec
    data: bytes


@dataclass(frozen=True)
class Wait(Command):
    """Wait for events until the monotonic time `until` -> Polled, or None when it has passed."""

    until: float
    replies: bool  # also read the injector's captured replies


@dataclass(frozen=True)
class Captured:
    headers: Headers
    data: bytes
    ifname: str = ""


@dataclass(frozen=True)
class Polled:
    at: float  # the monotonic time the reading ended
    events: tuple[TraceEvent, ...] = ()
    captures: tuple[Captured, ...] = ()


@dataclass(frozen=True)
class Reset(Command):
    """Answer the probe's SYN-ACK with the RST its client would send -> None."""

    spec: PacketSpec


@dataclass(frozen=True)
class Finish(Command):
    """Undo every change (newest first), close every source -> Finished. Also sent on the way
    out of an interrupted run."""

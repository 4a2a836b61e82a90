"""Handlers that read the ruleset (nft, iptables-nft-save, iptables-legacy-save); they change nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracer.plan import commands as c
from tracer.system import listing
from tracer import system

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def take_snapshot(run: RunState, cmd: c.TakeSnapshot) -> Any:
    return listing.take()


def save_legacy(run: RunState, cmd: c.SaveLegacy) -> Any:
    return listing.legacy()


def list_base_chains(run: RunState, cmd: c.ListBaseChains) -> str:
    return system.run(["nft", "list", "chains"], check=False).stdout


def ipt_save(run: RunState, cmd: c.IptSave) -> str:
    return system.run([listing.IPT_SAVE[cmd.family]], check=False).stdout


def legacy_has_raw(run: RunState, cmd: c.LegacyHasRaw) -> bool:
    return "raw" in system.proc_net(listing.LEGACY_NAMES[cmd.family]).split()


def list_chains(run: RunState, cmd: c.ListChains) -> str:
    return "".join(system.run(["nft", "-a", "list", "chain", *k]).stdout for k in cmd.keys)


def generation(run: RunState, cmd: c.Generation) -> int:
    from tracer.system.collect import ruleset_generation

    return ruleset_generation()


def met_chains(run: RunState, cmd: c.MetChains) -> Any:
    return listing.chains(cmd.keys, cmd.legacy_saved, cmd.wanted)


def filter_view(run: RunState, cmd: c.FilterView) -> Any:
    return listing.filter_view(cmd.legacy_saved)

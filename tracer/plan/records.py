"""How to take one change back: one frozen record per kind of change (pure).

A record says what to undo, not where: the run stamps its namespace on it when the change is
journaled (`in_netns`), so the pipeline that decides the change never carries namespace names.
The journal stores records as JSON in the shape `to_json` writes; `from_json` reads it back,
also from journals written before the records were typed (same keys: kind, what, netns, argv,
input, gone, key, value).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

NFT_GONE = ("No such file or directory",)


@dataclass(frozen=True)
class RunCommand:
    """Run argv (with input); a failure whose stderr contains one of `gone` means the thing is
    already gone."""

    kind: ClassVar[str] = "cmd"
    what: str  # for people: "table inet fwtrace_1a2b3c4d", "veth fwi... (injection port)"
    argv: tuple[str, ...]
    input: str = ""
    gone: tuple[str, ...] = ()
    netns: Optional[str] = None


@dataclass(frozen=True)
class RestoreSysctl:
    """Write the value a sysctl had before the run."""

    kind: ClassVar[str] = "sysctl"
    key: str
    old: str
    netns: Optional[str] = None

    @property
    def what(self) -> str:
        return f"{self.key}={self.old}"


@dataclass(frozen=True)
class ReleaseShared:
    """This run no longer needs the machine-wide switch `key` (tracer/system/shared.py restores it
    when no live run does)."""

    kind: ClassVar[str] = "shared"
    key: str
    run_id: str
    netns: Optional[str] = None

    @property
    def what(self) -> str:
        return f"{self.key} (global: restored once no fwtrace run needs it)"


@dataclass(frozen=True)
class RemoveClsact:
    """Delete the clsact qdisc fwtrace added to `dev`, unless somebody else's filters are on it."""

    kind: ClassVar[str] = "clsact"
    dev: str
    netns: Optional[str] = None

    @property
    def what(self) -> str:
        return f"clsact qdisc on {self.dev}"


@dataclass(frozen=True)
class RemoveCommented:
    """Delete the rules of nft chain `chain` ("family table name") whose comment is `marker`
    (--prove-fix's narrowed rules: nft tells a rule's handle only after the add, so the journal
    names the rule by its comment)."""

    kind: ClassVar[str] = "nft-comment"
    chain: str
    marker: str
    netns: Optional[str] = None

    @property
    def what(self) -> str:
        return f"rule in {self.chain} (--prove-fix)"


Undo = Union[RunCommand, RestoreSysctl, ReleaseShared, RemoveClsact, RemoveCommented]


def in_netns(undo: Undo, netns: Optional[str]) -> Undo:
    return dataclasses.replace(undo, netns=netns)


def nft_undo(batch: str, what: str) -> RunCommand:
    return RunCommand(what, ("nft", "-f", "-"), batch, gone=NFT_GONE)


def to_json(undo: Undo) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": undo.kind, "what": undo.what, "netns": undo.netns, "argv": [], "input": "",
                         "gone": [], "key": "", "value": ""}
    if isinstance(undo, RunCommand):
        d.update(argv=list(undo.argv), input=undo.input, gone=list(undo.gone))
    elif isinstance(undo, RestoreSysctl):
        d.update(key=undo.key, value=undo.old)
    elif isinstance(undo, ReleaseShared):
        d.update(key=undo.key, value=undo.run_id)
    elif isinstance(undo, RemoveCommented):
        d.update(key=undo.chain, value=undo.marker)
    else:
        d.update(key=undo.dev)
    return d


def from_json(d: dict[str, Any]) -> Undo:
    kind, netns = str(d["kind"]), d.get("netns")
    key, value = str(d.get("key", "")), str(d.get("value", ""))
    if kind == "sysctl":
        return RestoreSysctl(key, value, netns)
    if kind == "shared":
        return ReleaseShared(key, value, netns)
    if kind == "clsact":
        return RemoveClsact(key, netns)
    if kind == "nft-comment":
        return RemoveCommented(key, value, netns)
    if kind != "cmd":
        raise ValueError(f"unknown kind of undo {kind!r}")
    return RunCommand(str(d.get("what", "")), tuple(d.get("argv", ())), str(d.get("input", "")),
                      tuple(d.get("gone", ())), netns)

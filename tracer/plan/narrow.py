"""A suggested fix narrowed to the probe's own flow, for --prove-fix. Pure: no I/O.

The fix command (`iptables [-t T] -I CHAIN [N] SPEC`, `nft insert|add rule F T C [position H]
TEXT`) is rewritten so that it matches only packets from the probe's source address AND source
port (the port is random per proving run) -- or, for a fix of the replies, only packets to them
-- and carries the run's comment: while it is in place no other packet's verdict can change, and
cleanup finds it by that comment.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Optional

from tracer.model import IPAddress, Proto
from tracer.plan.records import RemoveCommented, RunCommand, Undo

_IPT_TOOLS = frozenset({"iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"})
_NFT_COMMENT = re.compile(r'\s*\bcomment\s+"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Narrowed:
    command: str  # for people: the narrowed rule as a command
    argv: tuple[str, ...]
    undo: Undo
    nft_commits: int  # nf_tables transactions it costs in and out (the generation proof counts them)
    table: Optional[tuple[str, str]] = None  # the nf_tables table it goes into (the cleanup proof lists it); None: x_tables


def marker(run_id: str) -> str:
    return f"fwtrace:{run_id}:prove"


def narrow(command: str, src: IPAddress, sport: Optional[int], proto: Proto, run_id: str,
           netns: Optional[str], reply: bool = False) -> Optional[Narrowed]:
    """The command narrowed to (src, sport); None when it is not an iptables/nft rule insertion.
    `reply`: the fix is for the service's replies (reply-dropped), which go back TO the probe's
    address and port: narrowed by destination instead."""
    if command.split()[:1] == ["nft"]:
        # nft's rule text keeps its quotes (`iifname "eth0"`): split off the words before it only.
        words = command.split(None, 6)
        if len(words) == 7 and words[6].startswith("position "):
            head, rest = words[6].split(None, 2)[:2], words[6].split(None, 2)[2:]
            words = words[:6] + head + rest
        return _narrow_nft(words, src, sport, proto, run_id, netns, reply)
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if argv[:1] and argv[0] in _IPT_TOOLS:
        return _narrow_ipt(argv, src, sport, proto, run_id, netns, reply)
    return None


def _narrow_ipt(argv: list[str], src: IPAddress, sport: Optional[int], proto: Proto, run_id: str,
                netns: Optional[str], reply: bool = False) -> Optional[Narrowed]:
    tool, rest = argv[0], argv[1:]
    table: list[str] = []
    if rest[:1] == ["-t"] and len(rest) > 1:
        table, rest = rest[:2], rest[2:]
    if len(rest) < 2 or rest[0] not in ("-I", "-A"):
        return None
    verb, chain, rest = rest[0], rest[1], rest[2:]
    pos: list[str] = []
    if verb == "-I" and rest and rest[0].isdigit():
        pos, rest = rest[:1], rest[1:]
    if "-j" not in rest:
        return None
    j = rest.index("-j")
    match, target = rest[:j], rest[j:]
    plen = 32 if src.version == 4 else 128
    addr_opts = ("-d", "--destination", "--dst") if reply else ("-s", "--source", "--src")
    match = _drop_option(match, addr_opts)  # the probe's address is inside it: it matched
    extra = ["-d" if reply else "-s", f"{src}/{plen}"]
    if proto is not Proto.ICMP and sport is not None:
        if not any(w in ("-p", "--protocol") for w in match):
            extra += ["-p", proto.value]
        extra += ["-m", proto.value, "--dport" if reply else "--sport", str(sport)]
    spec = match + extra + ["-m", "comment", "--comment", marker(run_id)] + target
    apply = [tool, "-w", *table, verb, chain, *pos, *spec]
    undo = RunCommand(f"{tool} {' '.join(table)} rule in {chain} (--prove-fix)".replace("  ", " "),
                      (tool, "-w", *table, "-D", chain, *spec),
                      gone=("does a matching rule exist", "No chain/target/match", "Bad rule"), netns=netns)
    legacy = tool.endswith("-legacy")
    where = None if legacy else ("ip6" if tool.startswith("ip6") else "ip", table[1] if table else "filter")
    return Narrowed(shlex.join(apply[:1] + apply[2:]), tuple(apply), undo, 0 if legacy else 2, where)


def _drop_option(words: list[str], names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in names and i + 1 < len(words):
            if out and out[-1] == "!":
                return words  # a negated source: leave the rule as it is
            i += 2
            continue
        out.append(words[i])
        i += 1
    return out


def _narrow_nft(argv: list[str], src: IPAddress, sport: Optional[int], proto: Proto, run_id: str,
                netns: Optional[str], reply: bool = False) -> Optional[Narrowed]:
    rest = argv[1:]
    if len(rest) < 6 or rest[0] not in ("insert", "add") or rest[1] != "rule":
        return None
    verb, family, table, chain = rest[0], rest[2], rest[3], rest[4]
    body = rest[5:]
    pos: list[str] = []
    if body[:1] == ["position"] and len(body) > 2:
        pos, body = body[:2], body[2:]
    text = _NFT_COMMENT.sub("", " ".join(body)).strip()
    if not text:
        return None
    l3 = "ip" if src.version == 4 else "ip6"
    narrowing = f"{l3} {'daddr' if reply else 'saddr'} {src}"
    if proto is not Proto.ICMP and sport is not None:
        narrowing += f" {proto.value} {'dport' if reply else 'sport'} {sport}"
    rule = f'{narrowing} {text} comment "{marker(run_id)}"'
    # One argument: nft joins its arguments into one command line, so the quotes survive.
    apply = ["nft", verb, "rule", family, table, chain, *pos, rule]
    undo = RemoveCommented(f"{family} {table} {chain}", marker(run_id), netns)
    command = f"nft {verb} rule {family} {table} {chain} {' '.join(pos) + ' ' if pos else ''}{rule}"
    return Narrowed(command, tuple(apply), undo, 2, (family, table))

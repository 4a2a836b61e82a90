"""Render the eBPF C programs of probes/ for the running kernel. Pure: text and facts in, text out.

What differs between kernels is decided here, before clang sees the program: the sk_buff /
net_device offsets (from BTF, see btf.py), and which tracepoints exist (a missing tracepoint would
make bcc fail to compile the whole program, so its section is left out instead).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

PROBES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "probes")
PKT_MAX = 192  # network + transport header bytes copied per event: an ICMP error and its quote fit

# tracepoint -> the #define that turns its section on
TRACEPOINTS = {
    "skb/kfree_skb": "HAVE_KFREE_SKB",
    "skb/consume_skb": "HAVE_CONSUME_SKB",
    "tcp/tcp_send_reset": "HAVE_TCP_SEND_RESET",
    "icmp/icmp_send": "HAVE_ICMP_SEND",
    "sock/inet_sock_set_state": "HAVE_SOCK_STATE",
}

# (constant, struct, member): every field the programs read through a pointer
FIELDS = (
    ("SKB_HEAD_OFF", "sk_buff", "head"),
    ("SKB_NH_OFF", "sk_buff", "network_header"),
    ("SKB_DEV_OFF", "sk_buff", "dev"),
    ("DEV_IFINDEX_OFF", "net_device", "ifindex"),
    ("DEV_NET_OFF", "net_device", "nd_net"),
    ("HOOK_STATE_HOOK_OFF", "nf_hook_state", "hook"),
    ("HOOK_STATE_PF_OFF", "nf_hook_state", "pf"),
)
REQUIRED = ("SKB_HEAD_OFF", "SKB_NH_OFF", "SKB_DEV_OFF", "DEV_IFINDEX_OFF", "DEV_NET_OFF", "NET_INUM_OFF")


class RenderError(ValueError):
    pass


@dataclass(frozen=True)
class Offsets:
    values: tuple[tuple[str, int], ...]  # (constant, byte offset), in FIELDS order

    def get(self, name: str) -> Optional[int]:
        return dict(self.values).get(name)


class BTF(Protocol):
    """What rendering needs of the kernel's BTF (tracer/collect/btf.py's BTF): member offsets."""

    def member_offset(self, struct_name: str, member: str) -> Optional[int]: ...


def offsets(btf: BTF) -> Offsets:
    """The byte offsets of FIELDS in the kernel `btf` describes; fields it lacks are left out."""
    found = []
    for const, struct_name, member in FIELDS:
        off = btf.member_offset(struct_name, member)
        if off is not None:
            found.append((const, off))
    # struct net's inode number: net.ns (struct ns_common) .inum
    ns, inum = btf.member_offset("net", "ns"), btf.member_offset("ns_common", "inum")
    if ns is not None and inum is not None:
        found.append(("NET_INUM_OFF", ns + inum))
    return Offsets(tuple(found))


def render_drops(template: str, offs: Offsets, tracepoints: dict[str, str]) -> str:
    """probes/drops.c with its #defines in front. `tracepoints`: name -> its tracefs format text
    (only the ones this kernel has)."""
    missing = [c for c in REQUIRED if offs.get(c) is None]
    if missing:
        raise RenderError("the kernel's BTF lacks " + ", ".join(missing))
    if "skb/kfree_skb" not in tracepoints or "field:enum skb_drop_reason reason" not in tracepoints["skb/kfree_skb"]:
        raise RenderError("this kernel's skb:kfree_skb tracepoint has no drop reason (Linux >= 5.17 has it)")
    lines = ["// rendered by fwtrace for the running kernel", f"#define PKT_MAX {PKT_MAX}"]
    lines += [f"#define {c} {offs.get(c)}" for c in REQUIRED]
    lines += [f"#define {TRACEPOINTS[tp]} 1" for tp in TRACEPOINTS if tp in tracepoints]
    if "field:enum sk_rst_reason reason" in tracepoints.get("tcp/tcp_send_reset", ""):
        lines.append("#define HAVE_RST_REASON 1")
    # skb:consume_skb gained its `location` field in Linux 6.3; 6.1's has only skbaddr.
    if "location;" in tracepoints.get("skb/consume_skb", ""):
        lines.append("#define HAVE_CONSUME_LOCATION 1")
    used = {tp: text for tp, text in tracepoints.items() if tp in TRACEPOINTS}
    return "\n".join(lines) + "\n" + _after_includes(template, enum_stubs(used.values()))


_ENUM_FIELD = re.compile(r"field:enum (\w+) ")


def enum_stubs(formats: Iterable[str]) -> list[str]:
    """Declarations for the enum types of tracepoint fields. bcc copies each field's C type from
    tracefs into the args struct it generates, so `enum sk_rst_reason reason;` needs the enum
    declared: it is renamed to a stub of fwtrace's (4 bytes, like the kernel's) instead of relying
    on the headers, which may be older than the kernel."""
    names = sorted({m for text in formats for m in _ENUM_FIELD.findall(text)})
    return [f"#define {n} fwtrace_{n}\nenum fwtrace_{n} {{ fwtrace_{n}_any = 0x7fffffff }};" for n in names]


def _after_includes(template: str, lines: list[str]) -> str:
    """`lines` inserted after the template's last #include (before any use of the types)."""
    head, sep, rest = template.rpartition("#include")
    if not sep:
        return "\n".join(lines) + "\n" + template
    eol = rest.index("\n") + 1
    return head + sep + rest[:eol] + "".join(line + "\n" for line in lines) + rest[eol:]


def render_hooks(template: str, offs: Offsets, attach: str) -> str:
    """probes/nfhook.c for `attach` = "kprobe" (kprobe/kretprobe) or "fentry" (fentry/fexit)."""
    if attach not in ("kprobe", "fentry"):
        raise RenderError(f"unknown attach type {attach!r}")
    need = REQUIRED + ("HOOK_STATE_HOOK_OFF", "HOOK_STATE_PF_OFF")
    missing = [c for c in need if offs.get(c) is None]
    if missing:
        raise RenderError("the kernel's BTF lacks " + ", ".join(missing))
    lines = ["// rendered by fwtrace for the running kernel", f"#define PKT_MAX {PKT_MAX}"]
    lines += [f"#define {c} {offs.get(c)}" for c in need]
    lines.append("#define USE_FENTRY 1" if attach == "fentry" else "#define USE_KPROBE 1")
    return "\n".join(lines) + "\n" + template


def template(name: str) -> str:
    with open(os.path.join(PROBES_DIR, name)) as f:
        return f.read()

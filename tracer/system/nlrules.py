"""nf_tables rules over netlink, without rendering them (the system half of tracer/system/sparse.py).

`nft -a list chain` renders every rule of a chain (~0.5 s CPU and ~1 s wall for 20,000 rules) and
`iptables -S CHAIN N` fetches the whole chain to print one rule; a GETRULE dump of one chain costs
~0.13 s for 20,000 rules when only the handle attribute is read (struct scanning, no objects per
attribute). The dump gives the rules in chain order, so a rule's number is its index; the raw
attributes of the few rules a report shows are kept, to be rendered by nft and iptables in a
scratch namespace (tracer/system/sparse.py).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Optional

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_GETSET = 6, 7, 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS = 1, 2, 3, 4
NFTA_RULE_COMPAT, NFTA_RULE_USERDATA = 5, 7
NFTA_SET_FLAGS, NFT_SET_EVAL = 3, 0x20
NLA_TYPE_MASK = 0x3FFF
FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
# Expressions that name another object (set, map, stateful object, flowtable): a rule using one
# cannot be copied alone into a scratch table.
_REFERS = (b"lookup", b"dynset", b"objref", b"flow_offload", b"connlimit\0")


@dataclass(frozen=True)
class ChainRules:
    handles: tuple[int, ...]  # every rule's handle, in chain order (rule number = index + 1)
    raw: dict[int, bytes]  # handle -> the attributes to copy (expressions, compat, userdata) of the wanted rules


def _attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n % 4)


def _msg(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def _rule_type(msg: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | msg


def _messages(sock: socket.socket) -> Iterable[tuple[int, bytes]]:
    """(type, whole message) until NLMSG_DONE; an NLMSG_ERROR carrying an error raises OSError
    (one carrying 0 is an ACK and is yielded)."""
    buf = bytearray(1 << 18)
    while True:
        n = sock.recv_into(buf)
        data = bytes(buf[:n])
        off = 0
        while off < n:
            length, kind = struct.unpack_from("=IH", data, off)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, off + 16)[0]
                if err:
                    raise OSError(err, f"nf_tables refused: {os.strerror(err)}")
            yield kind, data[off:off + length]
            off += (length + 3) & ~3


def dump_chain(family: str, table: str, chain: str, wanted: frozenset[int]) -> ChainRules:
    """The handles of one chain's rules in order, and the raw attributes of the `wanted` ones."""
    names = _attr(NFTA_RULE_TABLE, table.encode() + b"\0") + _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
    # Every message of this dump starts with the same table and chain attributes, then the
    # handle: one unpack per rule finds it (the attribute walk is the fallback).
    at = 20 + len(names)
    handles: list[int] = []
    raw: dict[int, bytes] = {}
    unpack = struct.unpack_from
    buf = bytearray(1 << 18)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.send(_msg(_rule_type(NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, 1, FAMILIES[family], names))
        while True:
            n = s.recv_into(buf)
            off = 0
            while off < n:
                length, kind = unpack("=IH", buf, off)
                if kind == NLMSG_DONE:
                    return ChainRules(tuple(handles), raw)
                if kind == NLMSG_ERROR:
                    err = -unpack("=i", buf, off + 16)[0]
                    raise OSError(err, f"nf_tables: {os.strerror(err)}")
                if unpack("=H", buf, off + at + 2)[0] & NLA_TYPE_MASK == NFTA_RULE_HANDLE:
                    handle = unpack(">Q", buf, off + at + 4)[0]
                    handles.append(handle)
                    if handle in wanted:
                        raw[handle] = _kept(bytes(buf[off:off + length]))
                else:
                    handle, kept = _walk(bytes(buf[off:off + length]))
                    if handle is not None:
                        handles.append(handle)
                        if handle in wanted:
                            raw[handle] = kept
                off += (length + 3) & ~3


def expressions_used(names: Iterable[str]) -> set[str]:
    """Which of `names` (nf_tables expressions, or x_tables matches inside a `match` expression)
    a rule of any table uses, from one GETRULE dump of the calling thread's namespace, nothing
    rendered (`nft list ruleset` takes ~0.3 s for 20,000 rules). Both names are an attribute
    `length, type 1, name, NUL`: that is searched for in each buffer, and where found, in the
    expressions of each rule (not its comment, table or chain name)."""
    pats = {n: struct.pack("=HH", 5 + len(n), 1) + n.encode() + b"\0" for n in names}
    found: set[str] = set()
    buf = bytearray(1 << 18)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.send(_msg(_rule_type(NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, 1, 0, b""))  # family 0: all
        while True:
            n = s.recv_into(buf)
            data = bytes(buf[:n])
            hits = [k for k, pat in pats.items() if k not in found and pat in data]
            off = 0
            while off < n:
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(err, f"nf_tables: {os.strerror(err)}")
                if hits:
                    exprs = _expressions(data[off:off + length])
                    found.update(k for k in hits if pats[k] in exprs)
                off += (length + 3) & ~3


def dynamic_set_exists() -> bool:
    """Does a set of any table have NFT_SET_EVAL (`flags dynamic`: every meter has it, anonymous
    or not, and every set a rule adds to), from one GETSET dump, no rule fetched? Where none has
    it, `nft -t list meters` (which fetches every rule: ~1 s for 50,000) can list no meter."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.send(_msg(_rule_type(NFT_MSG_GETSET), NLM_F_REQUEST | NLM_F_DUMP, 1, 0, b""))  # family 0: all
        found = False
        for _kind, m in _messages(s):  # read to NLMSG_DONE: the socket is closed after
            a = 20
            while a + 4 <= len(m):
                alen, kind = struct.unpack_from("=HH", m, a)
                if kind & NLA_TYPE_MASK == NFTA_SET_FLAGS and alen >= 8:
                    found = found or bool(struct.unpack_from(">I", m, a + 4)[0] & NFT_SET_EVAL)
                a += (alen + 3) & ~3
        return found


def _expressions(m: bytes) -> bytes:
    a, out = 20, []
    while a + 4 <= len(m):
        alen, kind = struct.unpack_from("=HH", m, a)
        if kind & NLA_TYPE_MASK == NFTA_RULE_EXPRESSIONS:
            out.append(m[a:a + alen])
        a += (alen + 3) & ~3
    return b"".join(out)


def _walk(m: bytes) -> tuple[Optional[int], bytes]:
    """(handle, the attributes to copy) of one rule message."""
    a, handle, keep = 20, None, []
    while a + 4 <= len(m):
        alen, kind = struct.unpack_from("=HH", m, a)
        kind &= NLA_TYPE_MASK
        if kind == NFTA_RULE_HANDLE:
            handle = struct.unpack_from(">Q", m, a + 4)[0]
        elif kind in (NFTA_RULE_EXPRESSIONS, NFTA_RULE_COMPAT, NFTA_RULE_USERDATA):
            keep.append(m[a:a + alen] + b"\0" * (-alen % 4))  # attributes stay aligned
        a += (alen + 3) & ~3
    return handle, b"".join(keep)


def _kept(m: bytes) -> bytes:
    return _walk(m)[1]


def refers_to_objects(raw: bytes) -> bool:
    """Does a rule use a set, map or named object (which a scratch table would lack)?"""
    return any(name in raw for name in _REFERS)


def _send_batch(sock: socket.socket, family: int, table: str, chain: str, raw: bytes) -> None:
    """One rule appended in a batch of its own. The kernel handles a batch inside send(), so by
    its return the rule is in or an error is queued (no ACKs asked for)."""
    body = _attr(NFTA_RULE_TABLE, table.encode() + b"\0") + _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0") + raw
    sock.send(_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, b"", NFNL_SUBSYS_NFTABLES)
              + _msg(_rule_type(NFT_MSG_NEWRULE), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND, 2, family, body)
              + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 3, 0, b"", NFNL_SUBSYS_NFTABLES))
    try:
        for _ in _messages(sock):  # raises on an error
            pass
    except BlockingIOError:
        return  # nothing queued: added


# The kernel does not dump NFTA_RULE_COMPAT (the `-p` an x_tables match was checked against),
# and matches like multiport refuse a rule without it. Rendering ignores it (nft and iptables
# print the protocol from the rule's own payload match), so a refused rule is tried again with
# each protocol an x_tables match may require.
_COMPAT_PROTOS = (6, 17, 132, 33, 136)
NFTA_RULE_COMPAT_PROTO, NFTA_RULE_COMPAT_FLAGS = 1, 2  # both required


def add_rules(family: str, table: str, rules: Iterable[tuple[str, bytes]]) -> None:
    """Append rules (chain, raw attributes from dump_chain) in order, in the calling thread's
    namespace (only ever a scratch namespace of fwtrace's own). OSError when one is refused."""
    fam = FAMILIES[family]
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.setblocking(False)
        for chain, raw in rules:
            try:
                _send_batch(s, fam, table, chain, raw)
                continue
            except OSError as e:
                if e.errno != errno.EINVAL or not (b"match\x00" in raw or b"target\x00" in raw):
                    raise
                refused = e
            for proto in _COMPAT_PROTOS:
                compat = _attr(NFTA_RULE_COMPAT | 0x8000, _attr(NFTA_RULE_COMPAT_PROTO, struct.pack(">I", proto))
                               + _attr(NFTA_RULE_COMPAT_FLAGS, struct.pack(">I", 0)))
                try:
                    _send_batch(s, fam, table, chain, raw + compat)
                    break
                except OSError:
                    continue
            else:
                raise refused

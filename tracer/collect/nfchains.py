"""Which nf_tables tables have a base chain on a given hook, from an NFT_MSG_GETCHAIN dump. Pure.

Near misses (tracer/diagnose/nearmiss.py) need the tables a probe's hook runs through, not their rules
first: on a 50k-rule host `nft list tables` takes seconds (nft 1.0.6 fetches every rule to
print the table names) and `nft list chains` ~0.3 s, while this dump takes milliseconds. The
request is built and the answer parsed here; tracer/ruleset/snapshot.py does the socket I/O.
"""
from __future__ import annotations

import struct

from tracer.collect.nftrace import FAMILIES, NFNL_SUBSYS_NFTABLES, attrs, messages

NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 3, 4
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
# enum nft_chain_attributes / nft_hook_attributes (include/uapi/linux/netfilter/nf_tables.h)
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 3, 4
NFTA_HOOK_HOOKNUM = 1
# enum nf_inet_hooks: the hook numbers of the ip, ip6 and inet families
INET_HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting", 5: "ingress"}


def getchain_dump_request(seq: int) -> bytes:
    nfgen = struct.pack("=BBH", 0, 0, 0)  # AF_UNSPEC: every family
    mtype = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN
    return struct.pack("=IHHII", 16 + len(nfgen), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + nfgen


def _has_hook(body: bytes) -> bool:
    """Does this NEWCHAIN message carry NFTA_CHAIN_HOOK? The kernel writes the attributes in type
    order (table, handle, name, hook, policy, ...: nf_tables_fill_chain_info), so only the headers
    up to the first type >= NFTA_CHAIN_HOOK are read. The nest is started without NLA_F_NESTED."""
    off = 4
    while off + 4 <= len(body):
        length, atype = struct.unpack_from("=HH", body, off)
        atype &= 0x3FFF
        if atype >= NFTA_CHAIN_HOOK or length < 4:
            return atype == NFTA_CHAIN_HOOK
        off += (length + 3) & ~3
    return False


def parse_chain_dump(data: bytes) -> tuple[list[tuple[str, str, str, str]], bool]:
    """([(family, table, chain, hook)] of the base chains, done) from datagrams of the dump."""
    out: list[tuple[str, str, str, str]] = []
    done = False
    for mtype, body in messages(data):
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            done = True
            continue
        # Regular chains (kube-proxy has tens of thousands) have no hook attribute: skip them
        # without walking their attributes.
        if mtype != (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN) or len(body) < 4 or not _has_hook(body):
            continue
        family = FAMILIES.get(body[0], str(body[0]))
        fields = dict(attrs(body[4:]))
        hook = ""
        for t, v in attrs(fields.get(NFTA_CHAIN_HOOK, b"")):
            if t == NFTA_HOOK_HOOKNUM and len(v) == 4 and family in ("ip", "ip6", "inet"):
                hook = INET_HOOKS.get(struct.unpack(">I", v)[0], "")
        table = fields.get(NFTA_CHAIN_TABLE, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
        name = fields.get(NFTA_CHAIN_NAME, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
        if hook:
            out.append((family, table, name, hook))
    return out, done


def tables_on(chains: list[tuple[str, str, str, str]], hooks: tuple[str, ...] = ("input", "forward")) -> list[tuple[str, str]]:
    """(family, table) with a base chain on one of `hooks`, in dump order."""
    found: list[tuple[str, str]] = []
    for family, table, _, hook in chains:
        if hook in hooks and (family, table) not in found:
            found.append((family, table))
    return found

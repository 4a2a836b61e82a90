"""The nf_tables table list over netlink (pure: the request and the parser; snapshot.py sends).

`nft list tables` fetches the whole ruleset into its cache first (nft 1.0.6: 0.8 s at 10k rules,
seconds at 50k); an NFT_MSG_GETTABLE dump costs one round trip whatever the rules. Each table
comes with its handle (a table deleted and made again has a new one), its flags (dormant,
owner), its owner and userdata (the comment), and its use count: the chains, sets, objects and
flowtables it holds (include/uapi/linux/netfilter/nf_tables.h, NFTA_TABLE_*), so a chain made
implicitly in any table shows up without listing a single rule.
"""
from __future__ import annotations

import json
import struct

from tracer.collect.nftrace import FAMILIES, NFNL_SUBSYS_NFTABLES, attrs, messages

NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NAME, _FLAGS, _USE, _HANDLE, _USERDATA, _OWNER = 1, 2, 3, 4, 6, 7


def gettable_request(seq: int) -> bytes:
    nfgen = struct.pack("=BBH", 0, 0, 0)  # NFPROTO_UNSPEC: every family
    return struct.pack("=IHHII", 16 + len(nfgen), NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE,
                       NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + nfgen


def parse_tables(data: bytes) -> tuple[dict[str, str], bool]:
    """("table FAMILY NAME" -> canonical content, whether the dump is complete) of the datagrams
    read so far; an error answer raises OSError with its errno."""
    out: dict[str, str] = {}
    done = False
    for mtype, body in messages(data):
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR and len(body) >= 4:
            code = struct.unpack_from("=i", body)[0]
            if code:
                raise OSError(-code, "NFT_MSG_GETTABLE refused")
        elif mtype == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE) and len(body) >= 4:
            fields = dict(attrs(body[4:]))
            name = fields.get(_NAME, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
            family = FAMILIES.get(body[0], str(body[0]))
            content = {key: struct.unpack(fmt, fields[attr])[0]
                       for key, attr, fmt in (("flags", _FLAGS, ">I"), ("use", _USE, ">I"), ("handle", _HANDLE, ">Q"),
                                              ("owner", _OWNER, ">I"))
                       if len(fields.get(attr, b"")) == struct.calcsize(fmt)}
            if _USERDATA in fields:
                content["userdata"] = fields[_USERDATA].hex()
            out[f"table {family} {name}"] = json.dumps(content, sort_keys=True)
    return out, done

"""`ip -j addr show` without the command: two rtnetlink dumps (RTM_GETLINK, RTM_GETADDR) in the
calling thread's network namespace, printed as the fields of iproute2's JSON that fwtrace reads
(ifindex, ifname, flags, addr_info: family, local, prefixlen, scope), in iproute2's order (links
as dumped, each with its addresses as dumped). tests/kernel/test_rtnl.py compares with `ip -j`."""
from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any, Iterator

NETLINK_ROUTE = 0
RTM_GETLINK, RTM_GETADDR = 18, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME, IFLA_LINK, IFLA_LINK_NETNSID = 3, 5, 37
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP, IFF_RUNNING = 0x1, 0x40
# iproute2's print_link_flags: these names in this order (IFF_RUNNING is never printed; an UP
# link without it is NO-CARRIER, printed first).
LINK_FLAGS = (("LOOPBACK", 0x8), ("BROADCAST", 0x2), ("POINTOPOINT", 0x10), ("MULTICAST", 0x1000), ("NOARP", 0x80),
              ("ALLMULTI", 0x200), ("PROMISC", 0x100), ("NOTRAILERS", 0x20), ("DEBUG", 0x4), ("DYNAMIC", 0x8000),
              ("AUTOMEDIA", 0x4000), ("PORTSEL", 0x2000), ("MASTER", 0x400), ("SLAVE", 0x800), ("UP", 0x1),
              ("LOWER_UP", 0x10000), ("DORMANT", 0x20000), ("ECHO", 0x40000))
SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def _attrs(buf: bytes, off: int) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, off)
        if n < 4:
            return
        yield kind & 0x3FFF, buf[off + 4:off + n]
        off += (n + 3) & ~3


def _dump(sock: socket.socket, kind: int, body: bytes, seq: int) -> Iterator[bytes]:
    """The payloads (after nlmsghdr) of one dump."""
    sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    while True:
        data = sock.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            length, mtype, _, mseq, _ = struct.unpack_from("=IHHII", data, off)
            if mseq == seq:
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(err, f"rtnetlink dump refused: {os.strerror(err)}")
                yield data[off + 16:off + length]
            off += max((length + 3) & ~3, 16)


def flag_names(flags: int) -> list[str]:
    out = ["NO-CARRIER"] if flags & IFF_UP and not flags & IFF_RUNNING else []
    return out + [name for name, bit in LINK_FLAGS if flags & bit]


def addresses_json() -> str:
    links: list[dict[str, Any]] = []
    by_index: dict[int, dict[str, Any]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.settimeout(10)
        peers: dict[int, int] = {}
        raw_flags: dict[int, int] = {}
        for m in _dump(sock, RTM_GETLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0), 1):
            _, _, index, flags, _ = struct.unpack_from("=BxHiII", m)
            attrs = dict(_attrs(m, 16))
            name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
            link = {"ifindex": index, "ifname": name, "flags": flag_names(flags), "addr_info": []}
            links.append(link)
            by_index[index] = link
            raw_flags[index] = flags
            iflink = struct.unpack("=I", attrs[IFLA_LINK])[0] if len(attrs.get(IFLA_LINK, b"")) == 4 else 0
            if iflink and IFLA_LINK_NETNSID not in attrs:
                peers[index] = iflink
        for index, iflink in peers.items():  # iproute2: the link's own peer here, down (or unknown): M-DOWN
            if not raw_flags.get(iflink, 0) & IFF_UP:
                by_index[index]["flags"].append("M-DOWN")
        for m in _dump(sock, RTM_GETADDR, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0), 2):
            family, plen, _, scope, index = struct.unpack_from("=BBBBI", m)
            if family not in (socket.AF_INET, socket.AF_INET6) or index not in by_index:
                continue
            attrs = dict(_attrs(m, 8))
            raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if raw is None:
                continue
            by_index[index]["addr_info"].append({
                "family": "inet" if family == socket.AF_INET else "inet6", "local": socket.inet_ntop(family, raw),
                "prefixlen": plen, "scope": SCOPES.get(scope, str(scope))})
    return json.dumps(links)

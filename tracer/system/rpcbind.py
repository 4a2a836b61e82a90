"""Ask rpcbind which ports its RPC programs have: one real ONC RPC call, PMAPPROC_DUMP (portmapper
program 100000 version 2, procedure 4; RFC 1833 §3), over TCP and then UDP, XDR encoded (RFC 4506).

Why a hand-written encoder: the package lists hold no maintained Python ONC-RPC client, and the
stdlib's `xdrlib` is deprecated (PEP 594) and gone in Python 3.13. The call needs only big-endian
32-bit words (`struct`): the call header with AUTH_NONE, and the reply's list of
{prog, vers, prot, port} entries, each preceded by XDR's "more follows" boolean. `encode_call`
and `decode_reply` do no I/O (tests/unit/test_services.py); `dump` sends.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Optional

from tracer.model import Proto
from tracer.plan.services import RPCBIND_PORT, Registration

PMAP_PROG, PMAP_VERS, PMAPPROC_DUMP = 100000, 2, 4
CALL, REPLY, MSG_ACCEPTED, SUCCESS = 0, 1, 0, 0
LAST_FRAGMENT = 0x80000000  # TCP record marking (RFC 5531 §11): top bit of the fragment header
IPPROTO = {6: Proto.TCP, 17: Proto.UDP}
ACCEPT_STAT = {1: "PROG_UNAVAIL", 2: "PROG_MISMATCH", 3: "PROC_UNAVAIL", 4: "GARBAGE_ARGS", 5: "SYSTEM_ERR"}


class RpcError(ValueError):
    """The answer was no valid reply to the call (said as what came back)."""


def encode_call(xid: int, prog: int = PMAP_PROG, vers: int = PMAP_VERS, proc: int = PMAPPROC_DUMP) -> bytes:
    """rpc_msg CALL: xid, CALL, rpcvers 2, prog, vers, proc, cred AUTH_NONE (0, len 0), verf AUTH_NONE."""
    return struct.pack(">10I", xid, CALL, 2, prog, vers, proc, 0, 0, 0, 0)


def decode_reply(data: bytes, xid: int) -> list[Registration]:
    """A PMAPPROC_DUMP reply -> its mappings; RpcError naming what came back instead."""
    def word(at: int) -> int:
        if at + 4 > len(data):
            raise RpcError(f"reply cut short at byte {at} of {len(data)}")
        return int(struct.unpack_from(">I", data, at)[0])

    if word(0) != xid or word(4) != REPLY:
        raise RpcError(f"not the reply to this call (xid {word(0):#x}, message type {word(4)})")
    if word(8) != MSG_ACCEPTED:
        raise RpcError("the call was denied (MSG_DENIED)")
    at = 16 + (word(16) + 3) // 4 * 4 + 4  # verifier: flavor, opaque<400> padded to 4 bytes
    stat = word(at)
    if stat != SUCCESS:
        raise RpcError(f"the call was not executed: {ACCEPT_STAT.get(stat, stat)}")
    at += 4
    out: list[Registration] = []
    while word(at) == 1:  # XDR optional-data: TRUE, then one pmap entry
        prog, vers, prot, port = (word(at + 4 * i) for i in range(1, 5))
        if prot in IPPROTO:
            out.append(Registration(prog, vers, IPPROTO[prot], port))
        at += 20
    return out


def _recv_record(s: socket.socket) -> bytes:
    out = b""
    while True:
        head = _recv_exact(s, 4)
        (mark,) = struct.unpack(">I", head)
        out += _recv_exact(s, mark & ~LAST_FRAGMENT)
        if mark & LAST_FRAGMENT:
            return out


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RpcError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _ask(addr: str, proto: Proto, timeout: float) -> list[Registration]:
    xid = int.from_bytes(os.urandom(4), "big")
    call = encode_call(xid)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if proto is Proto.TCP else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        s.connect((addr, RPCBIND_PORT))
        if proto is Proto.TCP:
            s.sendall(struct.pack(">I", LAST_FRAGMENT | len(call)) + call)
            return decode_reply(_recv_record(s), xid)
        s.send(call)
        return decode_reply(s.recv(65535), xid)


def dump(addrs: tuple[str, ...] = ("127.0.0.1", "::1"), timeout: float = 1.0) -> tuple[Optional[list[Registration]], str]:
    """PMAPPROC_DUMP in the calling thread's namespace, over TCP then UDP, to each address in turn:
    (mappings, how they were got) or (None, what was tried and what came back)."""
    tried: list[str] = []
    for addr in addrs:
        for proto in (Proto.TCP, Proto.UDP):
            where = f"PMAPPROC_DUMP over {proto.value} to {addr}:{RPCBIND_PORT}"
            try:
                return _ask(addr, proto, timeout), where
            except socket.timeout:
                tried.append(f"{where}: no answer in {timeout:g} s")
            except RpcError as e:
                tried.append(f"{where}: {e}")
            except OSError as e:
                tried.append(f"{where}: {e.strerror or e}")
    return None, "; ".join(tried)


def target_etc(name: str, netns: Optional[str]) -> tuple[str, str]:
    """(path, text) of the target's /etc/NAME (services, rpc): `ip netns exec NS` bind-mounts
    /etc/netns/NS/NAME over /etc/NAME, so a namespace's own copy there is what its programs read."""
    for path in ([f"/etc/netns/{netns}/{name}"] if netns else []) + [f"/etc/{name}"]:
        try:
            with open(path) as f:
                return path, f.read()
        except OSError:
            continue
    return f"/etc/{name}", ""

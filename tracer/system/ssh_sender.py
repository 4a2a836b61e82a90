"""The client side of `fwtrace probe --from ssh://HOST`: a self-contained Python 3 program that
fwtrace ships over the SSH session (its source, base64, as the first line of stdin) and that runs
on the client with nothing but the standard library. It sends each probe with plain sockets from
the client's own address and route (a TCP connect, a UDP datagram: no root needed) and reports
what the client saw, as the socket API tells it: connected (a SYN-ACK came), refused (a RST, or an
ICMP port-unreachable: the socket cannot tell them apart), an ICMP error, or nothing in time.

Protocol: JSON lines. The program says {"hello": ...} first; then each request line is answered
with one line: {"op": "addrs"} (`ip -j addr` there, or ""), {"op": "route", "dst": D} (the source
address the client would use towards D), {"op": "send", ...} (one probe, answered once it is
decided or timed out). This module imports nothing of fwtrace: it is sent as it is.
"""
import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

SAW = {
    errno.ECONNREFUSED: ("refused", "connection refused: a RST, or an ICMP port-unreachable"),
    errno.EHOSTUNREACH: ("icmp", "host unreachable: an ICMP host-unreachable or administratively prohibited"),
    errno.ENETUNREACH: ("icmp", "network unreachable: no route, or an ICMP net-unreachable"),
    errno.EACCES: ("local", "the client's own firewall refused to send (EACCES)"),
    errno.EPERM: ("local", "the client's own firewall refused to send (EPERM)"),
    errno.ETIMEDOUT: ("timeout", "no answer (timed out)"),
}


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def family(dst):
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def addrs():
    try:
        return subprocess.run(["ip", "-j", "addr"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=5, check=False).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return ""


def route(dst):
    s = socket.socket(family(dst), socket.SOCK_DGRAM)
    try:
        s.connect((dst, 9))  # UDP connect sends nothing: it only routes
        return s.getsockname()[0].split("%")[0]
    finally:
        s.close()


def saw_error(code):
    kind, text = SAW.get(code, ("error", os.strerror(code)))
    return {"saw": kind, "text": text, "errno": errno.errorcode.get(code, str(code))}


def send_tcp(dst, dport, sport, timeout):
    s = socket.socket(family(dst), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if ":" in dst else "0.0.0.0", sport))
        s.setblocking(False)
        sent = time.time()
        code = s.connect_ex((dst, dport))
        if code not in (0, errno.EINPROGRESS):
            return dict(saw_error(code), sent=sent)
        _, ready, _ = select.select([], [s], [], timeout)
        if not ready:
            return {"saw": "timeout", "text": "no answer within %gs" % timeout, "sent": sent}
        code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return dict(saw_error(code), sent=sent, after=time.time() - sent)
        # connected: end it with a RST (linger 0), as fwtrace's own probes do, not a FIN handshake
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return {"saw": "syn-ack", "text": "connected: the service answered with a SYN-ACK", "sent": sent,
                "after": time.time() - sent}
    finally:
        s.close()


def send_udp(dst, dport, sport, timeout):
    s = socket.socket(family(dst), socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if ":" in dst else "0.0.0.0", sport))
        s.connect((dst, dport))
        sent = time.time()
        try:
            s.send(b"fwtrace")
            ready, _, _ = select.select([s], [], [], timeout)
            if not ready:
                return {"saw": "timeout", "text": "no reply within %gs (UDP: an open port may stay silent too)" % timeout,
                        "sent": sent}
            data = s.recv(65535)
            return {"saw": "reply", "text": "a UDP reply of %d bytes" % len(data), "sent": sent,
                    "after": time.time() - sent}
        except OSError as e:
            return dict(saw_error(e.errno or 0), sent=sent, after=time.time() - sent)
    finally:
        s.close()


def handle(req):
    op = req.get("op")
    if op == "addrs":
        return {"text": addrs()}
    if op == "route":
        try:
            return {"src": route(req["dst"])}
        except OSError as e:
            return {"error": "no route to %s from the client: %s" % (req["dst"], e.strerror)}
    if op == "send":
        send = send_tcp if req["proto"] == "tcp" else send_udp
        try:
            return dict(send(req["dst"], int(req["dport"]), int(req["sport"]), float(req["timeout"])), id=req["id"])
        except OSError as e:
            return {"id": req["id"], "saw": "error", "text": "could not send: %s" % e.strerror,
                    "errno": errno.errorcode.get(e.errno or 0, "")}
    return {"error": "unknown request %r" % op}


def main():
    say({"hello": 1, "python": "%d.%d" % sys.version_info[:2], "uid": os.getuid(), "host": socket.gethostname()})
    for line in sys.stdin:
        if not line.strip():
            continue
        say(handle(json.loads(line)))


if __name__ == "__main__":
    main()

"""`--from ssh://[user@]host[:port]`: the client side of a probe on a real host, over the system's
OpenSSH client. The sender (tracer/system/ssh_sender.py) is shipped over the session's stdin and
run by the client's `python3`; nothing is installed there and no root is needed (plain sockets).

ssh runs with BatchMode (no password prompts: a key or an agent is needed) and a ConnectTimeout;
extra options (e.g. `-F FILE`, `-i KEY`) come from the environment variable FWTRACE_SSH_OPTIONS.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from tracer.errors import EnvironmentProblem, ExitStatus
from tracer.model import PacketSpec
from tracer.plan.sshurl import parse as parse_url

OPTIONS_ENV = "FWTRACE_SSH_OPTIONS"
CONNECT_TIMEOUT = 5


class SshUnreachable(EnvironmentProblem):
    status = ExitStatus.SSH_UNREACHABLE


class SshAuth(EnvironmentProblem):
    status = ExitStatus.SSH_AUTH


class RemoteNoPython(EnvironmentProblem):
    status = ExitStatus.REMOTE_PYTHON


def _program() -> str:
    """The remote command: read one base64 line (the sender's source) from stdin and run it."""
    return "python3 -c 'import sys,base64;exec(base64.b64decode(sys.stdin.readline()))'"


class RemoteClient:
    """One SSH session to the client host, running the sender."""

    def __init__(self, url: str, log: Any = None) -> None:
        self.dest = parse_url(url)
        self.log = log
        argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2",
                *shlex.split(os.environ.get(OPTIONS_ENV, "")), *self.dest.argv(), _program()]
        source = Path(__file__).with_name("ssh_sender.py").read_bytes()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise EnvironmentProblem("no `ssh` client here (--from ssh:// runs the system's OpenSSH client)",
                                     "install openssh-client") from None
        self._buf = b""
        self.results: dict[int, dict[str, Any]] = {}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(base64.b64encode(source) + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # ssh died already: its exit status and stderr say why, below
        self.hello = self._read_line(time.monotonic() + CONNECT_TIMEOUT * 2 + 5)

    def _fail(self) -> EnvironmentProblem:
        try:
            code = self.proc.wait(timeout=CONNECT_TIMEOUT * 2 + 5)
        except subprocess.TimeoutExpired:
            self.close()
            return SshUnreachable(f"ssh to {self.dest.name} did not answer in time", "check the host and the network")
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        return classify(self.dest.name, code, err)

    def _read_line(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                self.close()
                raise SshUnreachable(f"ssh to {self.dest.name}: no answer from the client side in time",
                                     "check that `ssh HOST python3 -V` works")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise self._fail()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return dict(json.loads(line))
        except ValueError:
            raise EnvironmentProblem(f"ssh to {self.dest.name}: the client side said {line[:80]!r}",
                                     "a login banner or shell output on stdout? check `ssh -T HOST true`") from None

    def request(self, obj: dict[str, Any], wait: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._fail() from None
        return self._read_line(time.monotonic() + wait)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


def classify(name: str, code: int, stderr: str) -> EnvironmentProblem:
    """ssh's exit status and first words, as one line: unreachable, refused key, no Python."""
    lines = [x for x in stderr.strip().splitlines() if x.strip() and not x.startswith("Warning: Permanently added")]
    first = lines[-1].strip() if lines else f"exit status {code}"
    if code == 255:
        if "Permission denied" in stderr or "Too many authentication failures" in stderr:
            return SshAuth(f"ssh to {name}: authentication failed ({first})",
                           "fwtrace uses BatchMode: load a key into ssh-agent or name one in ~/.ssh/config or "
                           f"{OPTIONS_ENV}='-i KEY'")
        if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            return SshAuth(f"ssh to {name}: host key verification failed",
                           "add the client's host key to known_hosts first (`ssh HOST true` once)")
        return SshUnreachable(f"ssh to {name} failed: {first}", "check the host name, port and the network path")
    if code == 127 or "python3: not found" in stderr or "python3: command not found" in stderr:
        return RemoteNoPython(f"no python3 on {name} (the client side of the probe needs Python 3)",
                              "install python3 there, or probe from another host")
    return EnvironmentProblem(f"the client side on {name} failed (exit status {code}): {first}",
                              "run `ssh HOST python3 -V` to check")


class RemoteSender:
    """The pipeline's Sender over one RemoteClient: a probe is a request; what the client saw
    comes back on the session's stdout (read by `poll` as it arrives)."""

    def __init__(self, client: RemoteClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.pending: set[int] = set()
        self.saw: dict[int, dict[str, Any]] = {}
        self.sent_at: dict[int, float] = {}

    def send(self, spec: PacketSpec, data: bytes) -> float:
        key = spec.sport
        assert self.client.proc.stdin is not None
        line = {"op": "send", "id": key, "proto": spec.proto.value, "dst": str(spec.dst), "dport": spec.dport,
                "sport": spec.sport, "timeout": self.timeout}
        try:
            self.client.proc.stdin.write((json.dumps(line) + "\n").encode())
            self.client.proc.stdin.flush()
        except BrokenPipeError:
            raise self.client._fail() from None
        self.pending.add(key)
        self.sent_at[key] = time.monotonic()
        return self.sent_at[key]

    def fileno(self) -> int:
        assert self.client.proc.stdout is not None
        return self.client.proc.stdout.fileno()

    def poll(self, until: float) -> list[Any]:
        """Reads what the client said (never packets: the client's sockets capture none)."""
        fd = self.fileno()
        while self.pending:
            left = until - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready and b"\n" not in self.client._buf:
                break
            answer = self.client._read_line(time.monotonic() + 1)
            if "id" in answer:
                self.saw[int(answer["id"])] = answer
                self.pending.discard(int(answer["id"]))
        return []

    def client_saw(self, spec: PacketSpec) -> dict[str, Any]:
        """What the client saw of this probe; waits for the answer (the connect's own timeout, plus the way back)."""
        if spec.sport in self.pending:
            self.poll(self.sent_at[spec.sport] + self.timeout + CONNECT_TIMEOUT)
        return self.saw.get(spec.sport, {"saw": "unknown", "text": "the client's answer did not come back in time"})

    def close(self) -> None:
        self.client.close()

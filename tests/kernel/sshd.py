"""Real OpenSSH servers inside test namespaces: each with a host key, config and authorized_keys
made here, listening on a lab address only, killed when the test ends."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

SSHD = "/usr/sbin/sshd"


def need_sshd() -> None:
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.fail("openssh-server / openssh-client missing: run scripts/setup")


class SshFarm:
    """One client key, any number of sshd (one per namespace)."""

    def __init__(self) -> None:
        need_sshd()
        self.dir = Path(tempfile.mkdtemp(prefix="fwtrace-sshd-"))
        self.key = self.dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        (self.dir / "authorized_keys").write_text((self.dir / "id_ed25519.pub").read_text())
        self.known = self.dir / "known_hosts"
        self.known.write_text("")
        self.procs: list[subprocess.Popen[bytes]] = []
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory

    def start(self, netns: str, addr: str, port: int = 22, extra: str = "") -> None:
        n = len(self.procs)
        hostkey = self.dir / f"host{n}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
        cfg = self.dir / f"sshd{n}.conf"
        cfg.write_text(f"ListenAddress {addr}\nPort {port}\nHostKey {hostkey}\n"
                       f"AuthorizedKeysFile {self.dir}/authorized_keys\nPermitRootLogin prohibit-password\n"
                       "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                       "PidFile none\nPrintMotd no\nSubsystem sftp internal-sftp\n" + extra)
        proc = subprocess.Popen(["ip", "netns", "exec", netns, SSHD, "-D", "-e", "-f", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"sshd{n}.log", "wb"),
                                start_new_session=True)  # its own group: its sessions' processes end with it
        self.procs.append(proc)
        host = f"[{addr}]:{port}" if port != 22 else addr
        with self.known.open("a") as f:
            f.write(f"{host} {(self.dir / f'host{n}.pub').read_text()}")
        self._wait_listening(netns, addr, port, proc)

    def _wait_listening(self, netns: str, addr: str, port: int, proc: "subprocess.Popen[bytes]") -> None:
        for _ in range(100):
            out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htln", f"sport = :{port}"],
                                 capture_output=True, text=True).stdout
            if addr in out:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("sshd did not start: " + (self.dir / f"sshd{len(self.procs) - 1}.log").read_text())

    @property
    def options(self) -> str:
        """ssh options for FWTRACE_SSH_OPTIONS / ansible_ssh_common_args."""
        return (f"-F /dev/null -i {self.key} -o IdentitiesOnly=yes -o UserKnownHostsFile={self.known} "
                "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null")

    def close(self, keep: Optional[bool] = None) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

"""A real FTP control session from the probe's client (`probe --app ftp`): Python's ftplib over a
socket opened in the sender's namespace, kept open while its passive data ports are probed (the
conntrack helper's expectation for a data port lives only as long as its control connection)."""
from __future__ import annotations

import ftplib
import os
import socket
from typing import Optional

from tracer import system
from tracer.model import IPAddress


class FtpControl:
    """One control connection: greeting, login, PASV/EPSV, QUIT."""

    def __init__(self) -> None:
        self.ftp: Optional[ftplib.FTP] = None
        self.sport: Optional[int] = None

    def open(self, netns: Optional[str], dst: IPAddress, port: int, user: str, password: str,
             wait: float) -> tuple[str, Optional[str], str]:
        """(the server's first line, "" none; why it failed (None: logged in or refused the login); the login's reply)."""
        fam = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        with system.netns(netns):
            sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(wait)
        try:
            sock.connect((str(dst), port))
        except OSError as e:
            sock.close()
            return "", f"the connection to {dst}:{port} failed: {e.strerror or e}", ""
        self.sport = sock.getsockname()[1]
        f = sock.makefile("r", encoding="latin-1", newline="\r\n")
        try:
            first = f.readline(8192).rstrip("\r\n")
        except (socket.timeout, OSError):
            first = ""
        # ftplib's own connect() reads a reply before it can tell it is none (an SSH banner, whose
        # "SSH-" looks like a multi-line reply's "NNN-", would make it wait for ever): the greeting
        # is checked first, then the socket is handed to ftplib for the session.
        if not first.startswith("220"):  # no FTP: no QUIT either (it would wait for a reply that never comes)
            f.close()
            sock.close()
            return first, None, ""
        ftp = ftplib.FTP()
        ftp.sock, ftp.file, ftp.af, ftp.host, ftp.port, ftp.timeout = sock, f, fam, str(dst), port, wait
        self.ftp = ftp
        try:
            while first.startswith("220-"):  # a multi-line greeting ends at "220 "
                line = f.readline(8192).rstrip("\r\n")
                if not line or line.startswith("220 "):
                    break
            ftp.welcome = first
            return first, None, ftp.login(user, password)
        except ftplib.Error as e:
            return first, None, str(e)
        except (OSError, EOFError) as e:
            return first, f"the session ended during the login: {e or 'connection closed'}", ""

    def command(self, cmd: str) -> str:
        """One command's reply line (an error reply too), or "failed: why"."""
        if self.ftp is None:
            return "failed: no session"
        try:
            return self.ftp.sendcmd(cmd)
        except ftplib.Error as e:
            return str(e)
        except (OSError, EOFError) as e:
            return f"failed: {e or 'connection closed'}"

    def close(self) -> None:
        if self.ftp is None:
            return
        try:
            self.ftp.quit()
        except (ftplib.Error, OSError, EOFError):
            pass
        self.ftp.close()
        self.ftp = None


def helper_facts(module: str, sysctl: str) -> tuple[Optional[bool], Optional[str]]:
    """(the helper module present: /sys/module/NAME exists for a loaded module and for a built-in one
    with parameters, as nf_conntrack_ftp's `ports`; the automatic-assignment sysctl's value, None when
    the kernel has none). Read only: nothing is loaded or set."""
    return os.path.isdir(f"/sys/module/{module}"), system.sysctl_get(sysctl)

"""What `probe --app ftp` asks of the system, as data (like tracer/plan/commands.py; carried out by
tracer/pipeline/drive/app.py through tracer/system/ftpclient.py). Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tracer.model import IPAddress
from tracer.plan.commands import Command


@dataclass(frozen=True)
class FtpOpen(Command):
    """Open an FTP control connection from `netns` (None: the target) and log in -> (greeting, error,
    login reply, the connection's local port or None)."""

    netns: Optional[str]
    dst: IPAddress
    port: int
    user: str
    password: str
    wait: float


@dataclass(frozen=True)
class FtpCommand(Command):
    """One command on the open control connection -> its reply line."""

    command: str


@dataclass(frozen=True)
class FtpHelper(Command):
    """Of the open control connection, in the target: (its conntrack entry's helper ("" none), the entry,
    nf_conntrack_ftp present?, net.netfilter.nf_conntrack_helper or None) -> tuple."""

    sport: int


@dataclass(frozen=True)
class FtpClose(Command):
    """QUIT and close the control connection -> None."""

"""`--from ssh://[user@]host[:port]`, parsed (pure): who the client host is and how ssh reaches it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from tracer.errors import UsageError

_URL = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                  r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?/?$")


@dataclass(frozen=True)
class Destination:
    user: Optional[str]
    host: str
    port: Optional[int]

    @property
    def name(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def argv(self) -> list[str]:
        host = self.host.strip("[]")
        return (["-p", str(self.port)] if self.port else []) + (["-l", self.user] if self.user else []) + ["--", host]


def parse(text: str) -> Destination:
    m = _URL.match(text)
    if not m:
        raise UsageError(f"--from {text!r} is not ssh://[user@]host[:port]", "e.g. --from ssh://admin@10.0.0.7")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--from {text!r}: port out of range (1-65535)", "e.g. ssh://host:22")
    return Destination(m["user"], m["host"], port)



"""Find and remove what fwtrace runs whose process is gone left in a namespace's ruleset."""
from __future__ import annotations

import os
import re
from typing import Any, Optional

from . import plan, system

_TABLE_RE = re.compile(r"^table inet (" + re.escape(plan.TABLE_PREFIX) + r"[0-9a-f]{8}) \{", re.M)


def stale_tables(ruleset_text: str, alive: Any = None) -> list[str]:
    """fwtrace tables whose recorded pid is not running (pure; `alive(pid)` is injected)."""
    alive = alive or _alive
    stale = []
    blocks = _TABLE_RE.split(ruleset_text)
    # split gives [before, name1, body1, name2, body2, ...]
    for name, body in zip(blocks[1::2], blocks[2::2]):
        m = plan.COMMENT_RE.search(body)
        if m is None or not alive(int(m.group(2))):
            stale.append(name)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(netns: Optional[str], log: Any) -> list[str]:
    system.require_root()
    with system.netns(netns):
        text = system.run(["nft", "list", "tables"]).stdout
        names = [line.split()[-1] for line in text.splitlines() if line.startswith("table inet " + plan.TABLE_PREFIX)]
        removed = []
        for name in names:
            body = system.run(["nft", "list", "table", "inet", name]).stdout
            if stale_tables(body):
                system.run(["nft", "delete", "table", "inet", name])
                log.info("removed stale table", table=name, netns=netns)
                removed.append(name)
        return removed

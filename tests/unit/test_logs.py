"""The deferred structlog logger: nothing imported or printed below the level, structlog's own
output at or above it. Runs in a child interpreter: this one has structlog imported already."""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, sys
from tracer.cli import logs
log = logs.configure_logging({fmt!r}, {verbose})
log.debug("probe.step", n=1)
log.info("probe.change", what="add table")
imported_before_warning = "structlog" in sys.modules
log.warning("probe.caveat", why="test")
print(json.dumps(imported_before_warning), file=sys.stdout)
"""


def child(fmt: str, verbose: int) -> tuple[bool, list[str]]:
    p = subprocess.run([sys.executable, "-c", CHILD.format(fmt=fmt, verbose=verbose)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout), p.stderr.splitlines()


def test_default_level_imports_structlog_only_for_a_warning() -> None:
    imported, lines = child("json", 0)
    assert imported is False
    [line] = lines
    assert json.loads(line)["event"] == "probe.caveat" and json.loads(line)["level"] == "warning"


def test_verbose_levels_log_through_structlog() -> None:
    imported, lines = child("json", 1)
    assert imported is True
    assert [json.loads(x)["event"] for x in lines] == ["probe.change", "probe.caveat"]
    _, lines = child("json", 2)
    assert [json.loads(x)["event"] for x in lines] == ["probe.step", "probe.change", "probe.caveat"]


def test_console_format_is_structlogs() -> None:
    _, [line] = child("console", 0)
    assert "probe.caveat" in line and "why" in line and "warn" in line

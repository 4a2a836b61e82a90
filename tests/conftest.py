"""Test tiers: plain unit tests, and `kernel` tests that need root, namespaces and netfilter.

CI runs as root on a real kernel: there a kernel test whose prerequisite is missing FAILS
(CI=true); on a developer's machine without root it is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil

import pytest

# Journals of this test session in a directory of its own (tracer.system.journal reads this at import,
# and fwtrace subprocesses inherit it): other sessions sharing the machine -- other worktrees'
# suites running SIGKILL tests -- neither see nor replay each other's journals.
os.environ.setdefault("FWTRACE_RUN_DIR", f"/run/fwtrace-tests/{os.getpid()}")

KERNEL_TOOLS = ("ip", "nft", "iptables", "ip6tables", "iptables-restore", "ip6tables-restore")


def kernel_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    missing += [t for t in KERNEL_TOOLS if shutil.which(t) is None]
    if not os.path.isdir("/proc/sys/net/netfilter"):
        missing.append("netfilter (/proc/sys/net/netfilter)")
    return missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    missing = kernel_prerequisites()
    if missing:
        msg = "kernel test prerequisites missing: " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI runs every tier: install them, see scripts/setup)", pytrace=False)
        pytest.skip(msg)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        os.rmdir(os.environ["FWTRACE_RUN_DIR"])  # only when empty: a journal left is a failure to see
    except OSError:
        pass

"""Test tiers: plain unit tests, and `kernel` tests that need root, namespaces and netfilter.

CI runs as root on a real kernel: there a kernel test whose prerequisite is missing FAILS
(CI=true); on a developer's machine without root it is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil

import pytest

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

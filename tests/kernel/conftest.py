"""Fixtures for kernel tests: throwaway namespace labs, and guards that nothing leaks out."""
from __future__ import annotations

import os
from typing import Callable, Iterator

import pytest

from tracer import system
from tracer.cli.lab import Lab

# Global, or the initial namespace's own: tests run against lab namespaces only, and the
# kernel-log path (tracer/plan/kernplan.py) sets nf_log_all_netns and may bind nf_log loggers.
GLOBAL_SYSCTLS = ("net.netfilter.nf_log_all_netns", "net.netfilter.nf_log.2", "net.netfilter.nf_log.10",
                  "net.netfilter.nf_conntrack_log_invalid")
# Several engineers' test runs may share the machine: each run names its namespaces after its
# pid, so the leak check below only sees its own.
PREFIX = f"fwtrace-test{os.getpid()}"
# A stock kernel loads netfilter modules on demand (a lab's conntrack rule loads nf_conntrack),
# and a module creates its sysctls at their defaults: absent before, default after is no leftover.
MODULE_DEFAULTS = {"net.netfilter.nf_conntrack_log_invalid": "0"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """The machine's own namespace: same ruleset, same global sysctls, no leftover test netns."""
    before_rules = system.run(["nft", "list", "ruleset"]).stdout
    before_legacy = _legacy_rules()
    before_sysctl = {k: system.sysctl_get(k) for k in GLOBAL_SYSCTLS}
    yield
    assert system.run(["nft", "list", "ruleset"]).stdout == before_rules, "host ruleset changed"
    assert _legacy_rules() == before_legacy, "host iptables-legacy rules changed"
    after_sysctl = {k: system.sysctl_get(k) for k in GLOBAL_SYSCTLS}
    appeared = {k for k, v in before_sysctl.items() if v is None and after_sysctl[k] == MODULE_DEFAULTS.get(k)}
    assert {k: v for k, v in after_sysctl.items() if k not in appeared} == \
        {k: v for k, v in before_sysctl.items() if k not in appeared}, "global sysctl not restored"
    assert not [n for n in system.netns_list() if n.startswith(PREFIX)], "test namespaces left behind"


def _legacy_rules() -> str:
    """The host's x_tables rules without counters and dates (reading creates no table)."""
    out = []
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        text = system.run([tool], check=False).stdout
        out += [line.split(" [")[0] for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(out)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(prefix=PREFIX) as lab_:
        yield lab_


@pytest.fixture
def router_lab() -> Iterator[Lab]:
    with Lab(prefix=PREFIX, backend=True) as lab_:
        yield lab_


@pytest.fixture
def make_lab() -> Callable[..., Lab]:
    """Labs beyond the one of the `lab` fixture, named so the guard knows them as ours."""
    return lambda **kw: Lab(prefix=PREFIX, **kw)

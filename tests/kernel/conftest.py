"""Fixtures for kernel tests: throwaway namespace labs, and guards that nothing leaks out."""
from __future__ import annotations

import os
from typing import Callable, Iterator

import pytest

from tracer import system
from tracer.lab import Lab

GLOBAL_SYSCTLS = ("net.netfilter.nf_log_all_netns",)
PREFIX = f"fwtrace-test{os.getpid()}"  # ours only: other test runs may share the machine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """The machine's own namespace: same ruleset, same global sysctls, no leftover test netns."""
    before_rules = system.run(["nft", "list", "ruleset"]).stdout
    before_sysctl = {k: system.sysctl_get(k) for k in GLOBAL_SYSCTLS}
    yield
    assert system.run(["nft", "list", "ruleset"]).stdout == before_rules, "host ruleset changed"
    assert {k: system.sysctl_get(k) for k in GLOBAL_SYSCTLS} == before_sysctl, "global sysctl not restored"
    assert not [n for n in system.netns_list() if n.startswith(PREFIX)], "test namespaces left behind"


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

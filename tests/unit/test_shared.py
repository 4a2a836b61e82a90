"""The shared global switch (tracer/system/shared.py): first run sets it, last run restores it."""
from __future__ import annotations

from pathlib import Path

from tracer.system import shared

KEY = "net.netfilter.nf_log_all_netns"


class Sysctl:
    def __init__(self, value: str) -> None:
        self.values = {KEY: value}
        self.writes = 0

    def read(self, key: str) -> str:
        return self.values[key]

    def write(self, key: str, value: str) -> None:
        self.values[key] = value
        self.writes += 1


def test_first_sets_last_restores(tmp_path: Path) -> None:
    s = Sysctl("0")
    alive = lambda record: True  # noqa: E731  (both runs are this test's own process)
    assert shared.acquire(KEY, "1", "a", s.read, s.write, str(tmp_path), alive) == "0"
    assert s.values[KEY] == "1"
    assert shared.acquire(KEY, "1", "b", s.read, s.write, str(tmp_path), alive) is None  # already held
    assert not shared.release(KEY, "a", s.write, str(tmp_path), alive)  # b still needs it
    assert s.values[KEY] == "1"
    assert shared.release(KEY, "b", s.write, str(tmp_path), alive)
    assert s.values[KEY] == "0" and s.writes == 2
    assert not shared.release(KEY, "b", s.write, str(tmp_path), alive)  # idempotent
    assert not (tmp_path / f"{KEY}.orig").exists()
    assert not (tmp_path / f"{KEY}.users").exists()  # nothing left once nobody needs the switch


def test_dead_users_do_not_hold_it_and_the_original_survives_them(tmp_path: Path) -> None:
    s = Sysctl("0")
    dead: set[str] = set()
    alive = lambda record: record not in dead  # noqa: E731
    shared.acquire(KEY, "1", "crashed", s.read, s.write, str(tmp_path), alive)
    [record] = [p.read_text() for p in (tmp_path / f"{KEY}.users").iterdir()]
    dead.add(record)  # the run was SIGKILLed: the switch stays 1, its journal is not replayed yet
    # A new run comes first: the original is still "0", not the "1" the dead run left.
    assert shared.acquire(KEY, "1", "next", s.read, s.write, str(tmp_path), alive) == "0"
    assert s.values[KEY] == "1"
    # "next" finishes (its record reads like the dead one's: same test process, so say "dead").
    assert shared.release(KEY, "next", s.write, str(tmp_path), lambda r: False)
    assert s.values[KEY] == "0"
    # fwtrace cleanup replaying the dead run's undo later changes nothing.
    assert not shared.release(KEY, "crashed", s.write, str(tmp_path), alive)
    assert s.values[KEY] == "0"


def test_an_admin_setting_is_kept(tmp_path: Path) -> None:
    s = Sysctl("1")
    assert shared.acquire(KEY, "1", "a", s.read, s.write, str(tmp_path), lambda r: True) == "1"
    assert shared.release(KEY, "a", s.write, str(tmp_path), lambda r: False)
    assert s.values[KEY] == "1"

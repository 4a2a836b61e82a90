"""Golden comparison of the `--json` documents the kernel tests' scenarios produce.

Not a test by itself (it needs the kernel tier): `scripts/golden capture DIR` runs the kernel
tests with this module loaded as a pytest plugin (and, through sitecustomize.py, in every
`python -m tracer` they start), and writes each probe's `--json` document (the JSON renderer's
document of the finished report) under DIR/<test>/. `scripts/golden compare A B` normalises what
differs from run to run (run ids, times, ports the kernel picks, the namespaces' pid names, the
tests' temporary paths) and prints each test whose documents differ.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ENV = "FWTRACE_GOLDEN_DIR"
_seq = [0]


def _test_dir(root: str) -> Path:
    current = os.environ.get("PYTEST_CURRENT_TEST", "no-test").rsplit(" (", 1)[0]
    return Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", current)


def install() -> None:
    """Wrap the probe run so every finished report's JSON document is written to $FWTRACE_GOLDEN_DIR."""
    root = os.environ.get(ENV)
    if not root:
        return
    from tracer.driver import Run
    from tracer.render import jsondoc

    if getattr(Run.execute, "_golden", False):
        return
    original = Run.execute

    def execute(self: Any) -> Any:
        report = original(self)
        try:
            doc = jsondoc.document(report)
            d = _test_dir(root)
            d.mkdir(parents=True, exist_ok=True)
            _seq[0] += 1
            (d / f"{os.getpid()}-{_seq[0]}.json").write_text(json.dumps(doc, indent=1, sort_keys=True, default=str))
        except Exception as e:  # the capture never changes the run
            print(f"golden capture failed: {e!r}", file=sys.stderr)
        return report

    execute._golden = True  # type: ignore[attr-defined]
    Run.execute = execute  # type: ignore[method-assign]


def pytest_configure(config: Any) -> None:
    install()


# -- comparison --------------------------------------------------------------------------------

VOLATILE_KEYS = re.compile(r"(^run_id$|time|^ts$|_ts$|^t$|^at$|duration|elapsed|_ms$|_ns$|^sport$|^ident$|^id$|^pid$)")
SUBS = [
    (re.compile(r"fwtrace-test\d+(-[0-9a-f]{6})?"), "NS"),
    (re.compile(r"/tmp/pytest-of-[^/\"]+/pytest-\d+/[^/\"]+"), "TMP"),
    (re.compile(r"\b[0-9a-f]{8}\b"), "HEX8"),
]


def _volatile_numbers(x: Any, found: set[int]) -> set[int]:
    """The probe's source ports and IP ids (the kernel or the RNG picks them each run)."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("sport", "ident") and isinstance(v, int) and v > 9:
                found.add(v)
            _volatile_numbers(v, found)
    elif isinstance(x, list):
        for v in x:
            _volatile_numbers(v, found)
    return found


def normalise(x: Any, key: str = "", numbers: Any = None) -> Any:
    if numbers is None:
        numbers = _volatile_numbers(x, set())
        numbers = re.compile(r"\b(" + "|".join(map(str, sorted(numbers, reverse=True))) + r")\b") if numbers else None
    if VOLATILE_KEYS.search(key):
        return "*"
    if isinstance(x, dict):
        return {k: normalise(v, k, numbers) for k, v in sorted(x.items())}
    if isinstance(x, list):
        return [normalise(v, key, numbers) for v in x]
    if isinstance(x, str):
        for pat, rep in SUBS:
            x = pat.sub(rep, x)
        return numbers.sub("N", x) if numbers else x
    return x


def load(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        docs = [json.dumps(normalise(json.loads(f.read_text())), indent=1, sort_keys=True) for f in d.glob("*.json")]
        out[d.name] = sorted(docs)
    return out


def compare(a: Path, b: Path) -> int:
    import difflib

    left, right = load(a), load(b)
    bad = 0
    for name in sorted(set(left) | set(right)):
        la, rb = left.get(name), right.get(name)
        if la == rb:
            continue
        bad += 1
        print(f"DIFF {name}: {len(la or [])} vs {len(rb or [])} documents")
        if la and rb and len(la) == len(rb):
            for x, y in zip(la, rb):
                if x != y:
                    sys.stdout.writelines(list(difflib.unified_diff(x.splitlines(True), y.splitlines(True), "a", "b", n=1))[:40])
    total = len(set(left) | set(right))
    print(f"{total - bad}/{total} tests' documents identical ({sum(map(len, left.values()))} vs {sum(map(len, right.values()))} documents)")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "compare":
        sys.exit("usage: fwtrace_golden.py compare DIR_A DIR_B")
    sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))

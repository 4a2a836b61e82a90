"""Golden comparison of the `--json` documents the kernel tests' scenarios produce.

Not a test by itself (it needs the kernel tier): `scripts/golden capture DIR` runs the kernel
tests with this module loaded as a pytest plugin (and, through sitecustomize.py, in every
`python -m tracer` they start), and writes each probe's `--json` document (the JSON renderer's
document of the finished report) under DIR/<test>/. `scripts/golden compare NEW BASE [BASE...]` normalises what
differs from run to run (run ids, times, ports the kernel picks, the namespaces' pid names, the
tests' temporary paths) and prints each test whose documents differ from every BASE capture.
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
    from tracer.pipeline.driver import Run
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
    (re.compile(r"fwtrace-test\d+(-[0-9a-f]{6})?|fwtrace-lab-[0-9a-f]{6}"), "NS"),
    (re.compile(r"MAC=[0-9a-f:]+"), "MAC=*"),
    (re.compile(r"\(id: 0x[0-9a-f]+"), "(id: N"),  # an ICMP echo's id
    (re.compile(r"(--nflog-group|group) \d+"), r"\1 N"),
    (re.compile(r":\d+ > "), ":N > "),  # a source port (a first pass's, not this document's probe)
    (re.compile(r"\b(SEQ|ACK)=\d+"), r"\1=*"),
    (re.compile(r"\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b"), "MAC"),
    (re.compile(r"/tmp/pytest-of-[^/\"]+/pytest-\d+/[^/\"]+"), "TMP"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{8}\b"), "HEX8"),  # run ids (fwtrace_<id> tables too)
    (re.compile(r"&0xffff=0x[0-9a-f]+"), "&0xffff=N"),  # the probe's IP id in a u32 match
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
    if key == "generations" and x and all(isinstance(v, int) for v in x):
        # the namespace's generation counter: where it starts and how far it steps depends on other
        # writers (the concurrency tests' second run); that it rose is what the report shows
        return [len(x), x == sorted(x)]
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


def compare(new: Path, bases: list[Path]) -> int:
    """Each test's documents in NEW must equal those of at least one BASE capture. A test whose
    documents differ between the BASE captures themselves (what the kernel logs of traffic the
    test provokes, a race) is unstable: listed, with whether NEW equals a base, but not failed."""
    import difflib

    got = load(new)
    base = [load(b) for b in bases]
    names = sorted(set(got).union(*base))
    bad = 0
    unstable = [n for n in names if len({json.dumps(b.get(n)) for b in base}) > 1]
    for name in names:
        mine = got.get(name)
        if any(mine == b.get(name) for b in base):
            continue
        if name in unstable:
            print(f"unstable, differs from every base (not failed): {name}")
            continue
        bad += 1
        ref = base[0].get(name)
        print(f"DIFF {name}: {len(mine or [])} vs {len(ref or [])} documents")
        if mine and ref and len(mine) == len(ref):
            for x, y in zip(ref, mine):
                if x != y:
                    sys.stdout.writelines(list(difflib.unified_diff(x.splitlines(True), y.splitlines(True), "base", "new", n=1))[:40])
    if unstable:
        print(f"unstable between the base captures (not failed): {', '.join(unstable)}")
    same = sum(1 for n in names if any(got.get(n) == b.get(n) for b in base))
    print(f"{same}/{len(names)} tests' documents identical to a base capture, {bad} failed "
          f"({sum(map(len, got.values()))} documents; bases: {', '.join(str(sum(map(len, b.values()))) for b in base)})")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "compare":
        sys.exit("usage: fwtrace_golden.py compare NEW BASE [BASE...]")
    sys.exit(compare(Path(sys.argv[2]), [Path(a) for a in sys.argv[3:]]))

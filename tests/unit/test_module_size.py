"""No module of tracer/ over 400 lines (issue 19): a longer one is split by moving whole, cohesive
groups of functions into a sibling module that the old one re-exports."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent / "tracer"
LIMIT = 400


def test_no_module_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT.parent)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert len(sizes) > 10  # the walk found the package
    over = {p: n for p, n in sorted(sizes.items()) if n > LIMIT}
    assert not over, f"modules over {LIMIT} lines (split them): {over}"

"""Golden files of every replayed bundle's output: the `--json` document, markdown, HTML, the SVG
map and the terminal text at 100 columns (issue 19: the restructuring changes none of them).
The live side of the comparison (the kernel tests' scenarios) is scripts/golden.

Regenerate after a deliberate change with FWTRACE_UPDATE_GOLDEN=1.
"""
from __future__ import annotations

import json
import os

import pytest

from tracer.render import html, jsondoc, markdown, svg, terminal

from .test_render import BUNDLES, DATA, report

OUT = DATA / "golden" / "replay"


@pytest.mark.parametrize("name", BUNDLES)
def test_replayed_outputs_unchanged(name: str) -> None:
    rep = report(name)
    got = {
        "json": json.dumps(jsondoc.document(rep), indent=1, sort_keys=True) + "\n",
        "md": markdown.render(rep, {"host": "h"}, "fwtrace probe"),
        "html": html.render(rep, {"host": "h"}, "fwtrace probe"),
        "svg": svg.for_report(rep),
        "txt": terminal.text(rep, width=100),
    }
    for ext, text in got.items():
        golden = OUT / f"{name}.{ext}"
        if os.environ.get("FWTRACE_UPDATE_GOLDEN"):
            OUT.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden.name} changed"

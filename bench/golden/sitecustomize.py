"""Loaded by `python -m tracer` processes the kernel tests start under `scripts/golden capture`."""
import os

if os.environ.get("FWTRACE_GOLDEN_DIR"):
    try:
        import fwtrace_golden

        fwtrace_golden.install()
    except Exception:  # pragma: no cover - the capture never breaks the run
        pass

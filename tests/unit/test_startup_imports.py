"""What a start of fwtrace imports (issue 25): `--version` and `--help` load none of the heavy
libraries, nothing runs `ldconfig -p`, and scapy loads without `cryptography` and, for IPv4,
without its IPv6 layers. Checked on sys.modules in a fresh interpreter, not on a timing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("scapy", "rich", "structlog", "bcc", "pyroute2", "cryptography")

# find_library runs `ldconfig -p` (a subprocess per start): make any call of it fail loudly.
PRELUDE = """
import ctypes.util, json, sys
def _no(*a, **k):
    raise AssertionError("ctypes.util.find_library called (it runs ldconfig -p)")
ctypes.util.find_library = _no
"""


def fresh(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def loaded(mods: list[str], top: str) -> list[str]:
    return [m for m in mods if m == top or m.startswith(top + ".")]


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["probe", "--help"]])
def test_version_and_help_import_no_heavy_library(argv: list[str]) -> None:
    mods = fresh(f"""
import io, contextlib
from tracer import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.main({argv!r})
    except SystemExit:
        pass
assert out.getvalue(), "nothing printed"
print(json.dumps(sorted(sys.modules)))
""")
    for top in HEAVY:
        assert loaded(mods, top) == [], f"fwtrace {' '.join(argv)} imported {top}"


def test_the_system_layer_loads_without_ldconfig() -> None:
    mods = fresh("import tracer.system, tracer.system.raw, tracer.system.bpfsys; print(json.dumps(sorted(sys.modules)))")
    assert "tracer.system.raw" in mods


def test_scapy_for_ipv4_loads_no_crypto_and_no_ipv6_layers() -> None:
    mods = fresh("""
from tracer.system import raw
from tracer.model import PacketSpec, Proto
import ipaddress
spec = PacketSpec(proto=Proto.TCP, src=ipaddress.ip_address("192.0.2.2"), dst=ipaddress.ip_address("192.0.2.1"),
                  sport=40000, dport=8080, flags="S", ident=7)
data = raw.build(spec)
assert raw.describe(data) == "IP / TCP 192.0.2.2:40000 > 192.0.2.1:8080 S", raw.describe(data)
import cryptography  # still importable for whoever needs it later
print(json.dumps([m for m in sorted(sys.modules) if m != "cryptography" and not m.startswith("cryptography.")]))
""")
    assert "scapy.layers.inet" in mods
    assert loaded(mods, "cryptography") == []
    assert "scapy.layers.inet6" not in mods and "scapy.route6" not in mods


def test_scapy_for_ipv6_loads_its_layers_on_demand() -> None:
    mods = fresh("""
from tracer.system import raw
from tracer.model import PacketSpec, Proto
import ipaddress
spec = PacketSpec(proto=Proto.TCP, src=ipaddress.ip_address("2001:db8:1::2"), dst=ipaddress.ip_address("2001:db8:1::1"),
                  sport=40000, dport=8080, flags="S", ident=7)
assert raw.describe(raw.build(spec)) == "IPv6 / TCP 2001:db8:1::2:40000 > 2001:db8:1::1:8080 S"
print(json.dumps(sorted(sys.modules)))
""")
    assert "scapy.layers.inet6" in mods
    assert loaded(mods, "cryptography") == []

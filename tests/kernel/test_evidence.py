"""The evidence bundle on the real kernel, checked file by file as a reader of the ticket would
open it: report.md, report.html in a real headless browser, path.svg, probe.pcapng in scapy, the
rulesets before and after (parsed by the real tools), counter deltas, environment, JSON schema.
And the command line as a person meets it: a default run writes nothing on stderr.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import xml.dom.minidom
from pathlib import Path

import jsonschema

from tracer import system
from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, Lab
from tracer.model import Proto

FWTRACE = [sys.executable, "-m", "tracer"]  # the code of this checkout, whatever the venv installed
SCHEMA = json.loads((Path(__file__).parent.parent.parent / "schema" / "report.schema.json").read_text())
CUSTOMER = "203.0.113.5"


def fwtrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FWTRACE, *args], capture_output=True, text=True, timeout=120)


def seed_lab(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))  # the customer is reached through the client


def chromium_dom(path: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed (scripts/setup installs it)"
    # A profile of its own: CI's environment may have no writable HOME.
    profile = path.parent.parent / "chromium-profile"
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_bundle_directory_every_file(lab: Lab, tmp_path: Path) -> None:
    seed_lab(lab)
    out = tmp_path / "bundle"
    p = fwtrace("probe", "--dport", "8080", "--src", CUSTOMER, "--netns", lab.server, "--evidence", str(out))
    assert p.returncode == 1, p.stderr
    assert p.stderr == ""
    assert p.stdout.splitlines()[-1] == f"BLOCKED {CUSTOMER} -> {SERVER4} tcp/8080: REJECT by filter INPUT rule 7"

    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert (doc["outcome"], doc["exit_status"]) == ("blocked", 1)
    sport = doc["packets"][0]["probe"]["sport"]

    # report.md: the conclusion, the fix and the command to replay the probe, which works
    md = (out / "report.md").read_text()
    assert "**Conclusion:** tcp port 8080 is blocked: INPUT rule 7 rejected it" in md
    replay = f"fwtrace probe --dport 8080 --dst {SERVER4} --src {CUSTOMER} --sport {sport} --netns {lab.server} --via eth0"
    assert replay in md and "iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT" in md
    again = fwtrace(*replay.split()[1:], "--json")
    assert again.returncode == 1
    printed = json.loads(again.stdout)  # --json prints the document report.json holds
    jsonschema.validate(printed, SCHEMA)
    assert printed["packets"][0]["decided_by"]["rule_number"] == 7 and printed["outcome"] == "blocked"

    # probe.pcapng: the probe and its reply, each with its verdict as a comment
    import scapy.layers.inet  # noqa: F401 - registers the IPv4 link type for the reader
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.utils import rdpcap

    probe, reply = rdpcap(str(out / "probe.pcapng"))
    assert (probe[IP].src, probe[IP].dst, probe[TCP].dport, probe[TCP].sport, str(probe[TCP].flags)) == \
        (CUSTOMER, str(SERVER4), 8080, sport, "S")
    assert (reply[IP].src, reply[ICMP].type, reply[ICMP].code) == (str(SERVER4), 3, 10)
    assert b"verdict REJECT by ip filter INPUT rule 7" in probe.comments[0]
    assert b"reply to probe 1: icmp 3/10 host-prohibited" in reply.comments[0]

    # rulesets before and after, with counters: the real tools accept them back (checked in the
    # client namespace, which they are not loaded into: --test / -c change nothing)
    for when in ("before", "after"):
        nft = out / when / "nft-ruleset.txt"
        assert "counter" not in nft.read_text() or "packets" in nft.read_text()
        lab.run(lab.client, ["nft", "-c", "-f", str(nft)])
        saved = (out / when / "iptables-save-c.txt").read_text()
        assert "[1:" in saved or "[0:0] -A INPUT -j REJECT" in saved
        lab.run(lab.client, ["iptables-restore", "--test", "--counters"], input=saved)
    deltas = (out / "counter-deltas.txt").read_text()
    assert "iptables filter INPUT: +1 packets +40 bytes: -A INPUT -j REJECT --reject-with icmp-host-prohibited" in deltas

    # path.svg: well-formed, INPUT marked as the deciding hook, the path drawn
    dom = xml.dom.minidom.parse(str(out / "path.svg"))
    hooks = {g.getAttribute("id"): g.getAttribute("class") for g in dom.getElementsByTagName("g")}
    assert "decided-bad" in hooks["hook-input"] and "met" in hooks["hook-prerouting"]
    assert "decided" not in hooks["hook-forward"] and "met" not in hooks["hook-forward"]

    # environment
    assert json.loads((out / "doctor.json").read_text())  # what the machine supports
    env = json.loads((out / "environment.json").read_text())
    assert env["kernel"].startswith("Linux ") and env["fwtrace version"] and "--evidence" in env["command line"]
    assert f"{SERVER4}/24" in (out / "environment" / "addresses.txt").read_text()
    assert "default via 192.0.2.2" in (out / "environment" / "routes.txt").read_text()
    assert ":8080" in (out / "environment" / "listening.txt").read_text()
    assert "net.ipv4.conf.eth0.rp_filter" in (out / "environment" / "sysctls.txt").read_text()

    # report.html in a real browser: the verdict and the picture are there, nothing fetched
    html = (out / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and "src=" not in html
    rendered = chromium_dom(out / "report.html")
    assert 'id="verdict"' in rendered and ">BLOCKED</span>" in rendered
    assert "<svg" in rendered and 'id="hook-input"' in rendered and "decided-bad" in rendered
    assert "REJECT filter INPUT rule 7" in rendered


def test_bundle_tar_gz_redacted(lab: Lab, tmp_path: Path) -> None:
    seed_lab(lab)
    out = tmp_path / "ticket.tar.gz"
    p = fwtrace("probe", "--dport", "8080", "--src", CUSTOMER, "--netns", lab.server, "--evidence", str(out), "--redact")
    assert p.returncode == 1 and p.stderr == "", p.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
        files = {n.split("/", 1)[1]: tar.extractfile(n).read().decode(errors="replace")  # type: ignore[union-attr]
                 for n in names if tar.getmember(n).isfile()}
    assert all(n.startswith("fwtrace-") for n in names)
    for name in ("report.md", "report.html", "report.json", "probe.pcapng", "path.svg", "counter-deltas.txt",
                 "environment.json", "REDACTED.txt", "before/nft-ruleset.txt", "after/iptables-save-c.txt"):
        assert name in files, name
    assert not any(n.endswith(".nlmsg") for n in files)
    routes, addrs = files["environment/routes.txt"], files["environment/addresses.txt"]
    assert str(CLIENT4) not in routes and "default via 198.18.0." in routes  # another address: a placeholder
    assert str(SERVER4) in addrs and "2001:db8:1::1" not in addrs  # the probe's own addresses stay
    assert CUSTOMER in files["report.md"]


def test_default_run_writes_nothing_on_stderr(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET.replace("-A INPUT -j REJECT --reject-with icmp-host-prohibited\n", ""))
    lab.listen(lab.server, Proto.TCP, 8080)
    p = fwtrace("probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--dst", str(SERVER4))
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout.splitlines()[-1].startswith(f"REACHED {CLIENT4} -> {SERVER4} tcp/8080: ACCEPT by filter INPUT rule 7 (syn-ack)")
    assert max(len(line) for line in p.stdout.splitlines()) <= 80
    verbose = fwtrace("-v", "probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client,
                      "--dst", str(SERVER4))
    assert "change" in verbose.stderr and "undone" in verbose.stderr and "[debug" not in verbose.stderr
    very = fwtrace("-vv", "probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client,
                   "--dst", str(SERVER4))
    assert "[debug    ] trace" in very.stderr and "[debug    ] sent" in very.stderr
    lines = fwtrace("-v", "--log-format", "json", "probe", "--dport", "8080", "--netns", lab.server, "--from-netns",
                    lab.client, "--dst", str(SERVER4)).stderr.splitlines()
    assert lines and all(json.loads(line)["level"] == "info" for line in lines)


def test_unknown_namespace_exits_3() -> None:
    p = fwtrace("probe", "--dport", "80", "--netns", "fwtrace-no-such-namespace")
    assert p.returncode == 3 and p.stderr.startswith("fwtrace: error: unknown network namespace"), p.stderr
    assert system.netns_list() is not None


def test_reply_dropped_on_its_way_out(lab: Lab, tmp_path: Path) -> None:
    """The SYN is accepted, the service answers, and OUTPUT drops the SYN-ACK: not reached."""
    lab.nft(lab.server, "table inet out {\n chain output {\n type filter hook output priority 0;\n"
                        " tcp sport 8080 drop\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    out = tmp_path / "b"
    p = fwtrace("probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--dst", str(SERVER4),
                "--timeout", "0.5", "--evidence", str(out))
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1].startswith(
        f"REPLY-DROPPED {CLIENT4} -> {SERVER4} tcp/8080: DROP by out output rule 1")
    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert (doc["outcome"], doc["exit_status"], doc["packets"][0]["outcome"]) == ("reply-dropped", 1, "reply-dropped")
    dom = xml.dom.minidom.parse(str(out / "path.svg"))
    hooks = {g.getAttribute("id"): g.getAttribute("class") for g in dom.getElementsByTagName("g")}
    assert "decided-bad" in hooks["hook-output"] and "decided-good" in hooks["hook-input"]

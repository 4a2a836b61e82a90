"""The demo: the seed's story in a throwaway lab (tracer/system/lab.py, re-exported here for the
tests and benchmarks that import the lab from tracer.cli.lab)."""
from __future__ import annotations

import ipaddress
import shlex
from typing import Any, Optional

from tracer import system
from tracer.errors import ExitStatus
from tracer.model import Proto
from tracer.system.lab import (  # noqa: F401  re-exported
    BACKEND4,
    BACKEND6,
    CLIENT4,
    CLIENT6,
    ROUTER_BACK4,
    ROUTER_BACK6,
    SEED_RULESET,
    SERVER4,
    SERVER6,
    Lab,
    published_port,
)

CUSTOMER4 = ipaddress.ip_address("203.0.113.5")


def demo(log: Any, as_json: bool = False, color: Optional[bool] = None) -> int:
    """The seed's story, end to end: port 8080 is closed for a customer, why, and the fix proven.

    First on the server alone (simulated ingress: the customer's SYN arrives on eth0), then the
    fix is applied inside the lab and a real second host (the client namespace) tries again.
    """
    import json
    import sys

    from tracer.pipeline import provefix
    from tracer.model import ProbeRequest
    from tracer.pipeline.driver import Run
    from tracer.render import jsondoc, terminal

    def show(report: Any) -> None:
        terminal.render(report, terminal.make_console(sys.stdout, color=color))
        print()

    system.require_root()
    from tracer import __version__
    from tracer.pipeline import cmdcheck

    probes: list[dict[str, Any]] = []  # --json: every probe's document, in the order they ran
    applied: list[str] = []

    def done(status: int) -> int:
        if as_json:  # one document: every probe, and the status the demo exits with
            sys.stdout.write(json.dumps({"demo": "shadowed-rule", "fwtrace_version": __version__,
                                         "exit_status": int(status), "probes": probes, "applied": applied},
                                        indent=2) + "\n")
        return status

    with Lab() as lab:
        lab.iptables_restore(lab.server, SEED_RULESET)
        lab.listen(lab.server, Proto.TCP, 8080)
        # The customer is reached through the client host, as through a gateway.
        lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
        log.info("lab ready", server=lab.server, client=lab.client, listener="tcp [::]:8080")
        alone = ProbeRequest(dport=8080, proto=Proto.TCP, netns=lab.server, src=CUSTOMER4, dst=SERVER4)
        # --prove-fix: the fix is tried for the customer's flow alone before it is suggested.
        first = cmdcheck.check(Run(alone, log).execute(), lab.server)
        before, steps = provefix.prove(first, log, provefix.runner(log))
        fix = next((f for f in before.findings if f.code == "shadowed-rule" and f.proven), None)
        command = f"fwtrace probe --dport 8080 --src {CUSTOMER4} --netns {lab.server} --prove-fix"
        if as_json:
            probes.append({"command": command, **provefix.to_json(jsondoc.document(before), steps)})
        else:
            print("$ iptables -S INPUT   # in the server namespace\n" + lab.run(lab.server, ["iptables", "-S", "INPUT"]).stdout)
            print(f"# Customer {CUSTOMER4} cannot reach port 8080. On the server alone:")
            print(f"$ {command}")
            sys.stdout.flush()
            show(before)
            print(provefix.render(steps, before.reached))
        if fix is None:
            print("demo: fwtrace did not find (or could not prove) the fix of the shadowed rule", file=sys.stderr)
            return done(ExitStatus.BLOCKED)
        for cmd in fix.commands:
            if not as_json:
                print(f"$ {cmd}   # applying the suggested fix inside the lab")
            lab.run(lab.server, shlex.split(cmd))
            applied.append(cmd)
        remote = ProbeRequest(dport=8080, proto=Proto.TCP, netns=lab.server, from_netns=lab.client, dst=SERVER4)
        after = cmdcheck.check(Run(remote, log).execute(), lab.server)
        command = f"fwtrace probe --dport 8080 --netns {lab.server} --from-netns {lab.client}"
        if as_json:
            probes.append({"command": command, **jsondoc.document(after)})
        else:
            print(f"\n# And from a real second host (namespace {lab.client}) after the fix:")
            print(f"$ {command}")
            sys.stdout.flush()
            show(after)
        if not (before.cleanup_ok and after.cleanup_ok):
            return done(ExitStatus.LEFTOVER)  # the reports name what is left
        return done(ExitStatus.OK if after.reached and not before.reached else ExitStatus.BLOCKED)

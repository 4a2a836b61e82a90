"""`fwtrace what-if` and `fwtrace replay`: their parsers and commands (moved whole from tracer/cli/__init__.py)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from tracer.cli import cliargs
from tracer.system import console
from tracer.errors import ExitStatus
from tracer.model import Proto


EPILOG_WHATIF = """\
examples:
  fwtrace what-if --dport 8443 -- iptables -I INPUT 1 -p tcp --dport 8443 -j ACCEPT
        who else gets in on 8443 if I run this? (a banned range? another zone?)
  fwtrace what-if --dport 22 --src 198.51.100.7 -- iptables -D INPUT 3
  fwtrace what-if --netns srv --from-netns cli --dport 8080 -- nft add rule inet filter input tcp dport 8080 accept
  fwtrace what-if --dport 8443 -- ufw allow from 198.51.100.7 to any port 8443 proto tcp
  fwtrace what-if --dport 8443 -- firewall-cmd --zone=public --add-port=8443/tcp
  fwtrace what-if --bundle ticket-4711.tar.gz --dport 8080 -- iptables -I INPUT 1 -p tcp --dport 8080 -j ACCEPT
        the same on a ticket's firewall, rebuilt from its evidence bundle on this machine

The command runs in a shadow: a throwaway namespace with a copy of the target's rulesets (nft,
iptables-nft, iptables-legacy), ipsets, xt_recent entries, addresses, routes, the sysctls that
decide packets and a stand-in listener on each listening port. The shadow is probed before and
after (simulated ingress) from the client (--src, or --from-netns's address), one address of
every source range, set and xt_recent list the ruleset names, and an internet address, on --dport
and the ports the command names, and from the client on the other listening ports. The host is
only read. For `ufw allow|deny|reject|limit ...` and `firewall-cmd [--zone=Z] --add-port=...`,
--remove-port, --add-source, --add-service, --add-rich-rule (the target must have ufw's chains or
firewalld's `inet firewalld` table) no owner tool runs: the rules it would write are applied in the
shadow, and printed ("applied the rules `ufw allow 8443/tcp` would write: ...").

exit status:
  0    the command ran in the shadow; the table says who gains and who loses
  2    not a firewall command (iptables, ip6tables, nft, ipset, sysctl -w net.*, ufw, firewall-cmd), a bad
       or untranslated option, or an owner's command on a target that owner does not manage
  3    the shadow cannot be built (not root, no namespaces, the ruleset does not load)
  6    the command failed inside the shadow (it would fail on the host too)
"""

EPILOG_REPLAY = """\
examples:
  fwtrace replay ticket-4711.tar.gz
  fwtrace replay tests/data/bundles/seed-shadowed --json

Rebuilds the firewall of an evidence bundle (`fwtrace probe --evidence`) in a shadow namespace on
this machine (no access to the original host, no ufw/firewalld needed) and runs the bundle's probe
again; says whether verdict, deciding rule and reply match, and what the bundle did not carry.

exit status:
  0    verdict, deciding rule and reply match the bundle's
  1    they differ (the lines marked DIFF)
  3    the shadow cannot be built
  7    not an fwtrace bundle, or one from a newer fwtrace
"""


def _add_whatif(sub: Any) -> None:
    wi = sub.add_parser("what-if", help="run an iptables/nft/ipset/sysctl (or ufw/firewall-cmd) command in a shadow copy of the firewall and "
                        "show who gains and who loses access (the host is not changed)", epilog=EPILOG_WHATIF,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        usage="fwtrace what-if --dport PORT [--proto tcp|udp] [target options] [--json] -- CMD...")
    wi.add_argument("--dport", type=cliargs.port, metavar="PORT", required=True, help="the port the probes go to (also: the ports the command names)")
    wi.add_argument("--proto", choices=("tcp", "udp"), default="tcp", help="protocol (default tcp)")
    wi.add_argument("--dst", type=cliargs.address, help="the target's address to probe (default: its first global address)")
    wi.add_argument("--src", type=cliargs.address, help="the client (default: --from-netns's address, else 203.0.113.5)")
    wi.add_argument("--netns", help="the namespace whose firewall is copied (default: the current one; only read)")
    wi.add_argument("--from-netns", help="the client's namespace: its address is the client (only read)")
    wi.add_argument("-6", "--ipv6", action="store_true", help="pick IPv6 addresses when --dst is not given")
    wi.add_argument("--bundle", metavar="BUNDLE.tar.gz|DIR", help="copy the firewall of an evidence bundle (a ticket's) "
                    "instead of --netns: what-if on another machine's firewall")
    wi.add_argument("--timeout", type=cliargs.timeout, default=0.5, help="seconds to wait for a reply per probe (default 0.5)")
    wi.add_argument("--json", action="store_true", help="print one JSON document ({\"whatif\": {\"changes\": [...]}})")
    wi.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command, after --")


def _add_replay(sub: Any) -> None:
    rp = sub.add_parser("replay", help="rebuild an evidence bundle's firewall in a shadow namespace and run its probe again",
                        epilog=EPILOG_REPLAY, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("bundle", metavar="BUNDLE.tar.gz|DIR", help="what `fwtrace probe --evidence` wrote")
    rp.add_argument("--timeout", type=cliargs.timeout, default=1.0, help="seconds to wait for a reply (default 1)")
    rp.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_whatif(ns: argparse.Namespace, log: Any) -> int:
    from tracer.model import ProbeRequest
    from tracer.plan import shadow as shadow_plan

    argv = list(ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd)
    shadow_plan.check_command(argv)  # before anything is read or built
    from tracer import system

    system.require_root()
    from tracer.pipeline import whatif

    req = ProbeRequest(dport=ns.dport, proto=Proto(ns.proto), dst=ns.dst, src=ns.src, netns=ns.netns,
                       from_netns=ns.from_netns, ipv6=ns.ipv6, timeout=ns.timeout)
    if ns.netns is not None:
        system.netns_path(ns.netns)  # unknown namespace: exit 3 before the shadow is built
    if ns.bundle is not None:
        whatif.check_bundle(whatif.read_bundle(ns.bundle), ns.bundle)  # exit 7 before the shadow is built
    result = whatif.what_if(req, argv, log, bundle=ns.bundle)
    out = json.dumps({"whatif": result.to_json()}, indent=2) + "\n" if ns.json else shadow_plan.render(result)
    if console.write_out(out) is not None:
        return ExitStatus.ENVIRONMENT
    return ExitStatus.LEFTOVER if result.shadow_left else ExitStatus.OK


def cmd_replay(ns: argparse.Namespace, log: Any) -> int:
    from tracer import system
    from tracer.pipeline import whatif

    files = whatif.read_bundle(ns.bundle)
    whatif.check_bundle(files, ns.bundle)  # a bad bundle: exit 7 before root is asked for
    system.require_root()
    result = whatif.replay(ns.bundle, log, timeout=ns.timeout)
    out = json.dumps({"replay": result.to_json()}, indent=2) + "\n" if ns.json else whatif.render_replay(result)
    if console.write_out(out) is not None:
        return ExitStatus.ENVIRONMENT
    return ExitStatus.OK if result.matches else ExitStatus.BLOCKED

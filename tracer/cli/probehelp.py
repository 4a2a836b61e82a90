"""`fwtrace probe --help`'s epilog: what the verdicts, findings and exit statuses mean."""
from __future__ import annotations

from tracer.cli.servicecmd import EPILOG as EPILOG_SERVICE

EPILOG_PROBE = """\
examples:
  fwtrace probe --dport 8080 --src 203.0.113.5
        why can't customer 203.0.113.5 reach port 8080 of this machine? The probe is received on
        the interface of the route back to 203.0.113.5 (or --via IFACE) as if it came from there;
        its reply is caught before it leaves the machine.
  fwtrace probe --dport 8080 --netns srv --from-netns client
        probe from a real second host: namespace client, on a link to the host in namespace srv
  fwtrace probe --dport 8080 --local
        send from the machine itself (OUTPUT -> lo -> INPUT); rules on eth0 are not exercised
  fwtrace probe --dport 53 --proto udp --dst 192.0.2.1 --via eth1
  fwtrace probe --dport 53 --proto both --dst 192.0.2.1   (DNS: tcp and udp in one run)
  fwtrace probe --proto icmp --dst 2001:db8::1 --json
__SERVICE_EPILOG__
  fwtrace probe --dport 443 --flags A     (a stray ACK: what does conntrack/the firewall do?)
  fwtrace probe --dport 8080 --prove-fix  (blocked? try the fix for this probe alone, and say if it is enough)
  fwtrace probe --dport 22 --log          (also log the probe in every iptables chain it enters)
  fwtrace probe --dport 22 --log kmsg     (... with LOG rules, as dmesg shows them)
  fwtrace probe --dport 8080 --ebpf on    (the kernel's drop reason from the start: rp_filter, no socket,
                                         a full accept queue, a netfilter drop outside the traced chains)

"reached" means the service's answer came back out through the firewall: a SYN-ACK for a SYN,
a RST for a stray ACK/FIN to a listening port, a UDP reply (or, for UDP, silence and no ICMP
error: the text says which), an echo reply for ICMP. A reply dropped on its way out (OUTPUT,
POSTROUTING) is not reached. With --count N every packet must have reached.

  fwtrace probe --dport 8080 --evidence ticket-4711.tar.gz --redact
        also write the evidence for a ticket: report.md/.html/.json, probe.pcapng, path.svg,
        rulesets before and after with counters, environment; other addresses made placeholders

fwtrace's own options (-v/-vv, --log-format, --traceback: see `fwtrace --help`) may also be
given here, after `probe`.

exit status:
  0    the probe reached the service
  1    blocked, no listener, or unanswered (or the reply was dropped)
  2    usage error (bad option or value)
  3    environment problem (not root, missing tool, unknown namespace, the report or the
       evidence bundle could not be written: the report is printed first, no partial bundle)
  4    internal error (a bug: rerun with --traceback and report it)
  5    cleanup incomplete (the report names what is left and the command that removes it)
  11   --service: no such service (not in /etc/services or /etc/rpc, no process of that name listening);
       with --service the status is the highest of its probes'
  12   --app ftp: the service answered but speaks no FTP (the report says what came back)
  130  interrupted (SIGINT, SIGTERM, SIGHUP; changes undone)
"""
EPILOG_PROBE = EPILOG_PROBE.replace("__SERVICE_EPILOG__\n", EPILOG_SERVICE)

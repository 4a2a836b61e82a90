#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see the fwtrace repository's LICENSE)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: probe
short_description: Probe a port on the target with fwtrace and return its report
description:
  - Runs C(fwtrace probe --json) on the target with the probe's long options as arguments and
    returns the versioned JSON report under C(report).
  - A blocked port is data, not a failure; the task fails only when fwtrace itself failed (bad
    argument, not root, missing tool, ssh to the client host failed, cleanup incomplete).
  - "Temporary changes the probe makes on the target (all removed before it returns, and proven
    removed object by object): one nftables table C(inet fwtrace_<run id>) with trace rules; for
    simulated ingress a veth pair and tc programs; with O(log) rate-limited LOG/NFLOG rules; with
    O(ebpf) eBPF programs. C(changed) is false only once that cleanup proof holds."
  - In check mode nothing runs on the target; the result has the command and the plan only.
version_added: "0.1.0"
author: fwtrace developers
requirements:
  - fwtrace on the target (O(executable)), run as root (C(become))
options:
  dport:
    description: Destination port (required for tcp and udp).
    type: int
  proto:
    description: Protocol.
    type: str
    choices: [tcp, udp, icmp]
    default: tcp
  flags:
    description: TCP flags in letters (default S).
    type: str
  dst:
    description: Destination address.
    type: str
  src:
    description: Source address.
    type: str
  sport:
    description: Source port.
    type: int
  count:
    description: Number of probe packets.
    type: int
  netns:
    description: Network namespace of the host under diagnosis.
    type: str
  via:
    description: Simulated ingress interface.
    type: str
  local:
    description: Send from the target itself.
    type: bool
    default: false
  from_netns:
    description: Send from this namespace.
    type: str
  from_url:
    description: Send from a real client host, V(ssh://[user@]host[:port]) (C(fwtrace probe --from)).
    type: str
  timeout:
    description: Seconds to wait for a reply per packet.
    type: float
  ipv6:
    description: Pick IPv6 addresses when O(dst) is not given.
    type: bool
    default: false
  log:
    description: Also log the probes with temporary rate-limited rules.
    type: str
    choices: [nflog, kmsg]
  ebpf:
    description: The kernel's own drop reasons through eBPF.
    type: str
    choices: [auto, 'on', 'off']
  prove_fix:
    description: When blocked, try the first fix narrowed to this probe, and remove it again.
    type: bool
    default: false
  evidence:
    description: Leave the evidence bundle at this new path (a C(.tar.gz) file or an empty
      directory) for M(ansible.builtin.fetch).
    type: path
  redact:
    description: Redact addresses in the evidence bundle.
    type: bool
    default: false
  executable:
    description: The fwtrace command on the target.
    type: str
    default: fwtrace
attributes:
  check_mode:
    support: full
    description: Returns the plan (command and temporary changes) without touching the host.
notes:
  - The report's schema is fwtrace's C(schema/report.schema.json) (C(schema_version)).
'''

EXAMPLES = r'''
- name: Why is 8443 closed from the load balancer?
  fwtrace.fwtrace.probe:
    dport: 8443
    from_url: ssh://probe@lb1.example.com
  become: true
  register: probe

- name: Simulated client, with an evidence bundle to fetch
  fwtrace.fwtrace.probe:
    dport: 8080
    evidence: /tmp/fwtrace-{{ inventory_hostname }}.tar.gz
  become: true
  register: probe

- ansible.builtin.debug:
    msg: "{{ probe.outcome }}: {{ probe.report.conclusion }}"
'''

RETURN = r'''
report:
  description: fwtrace's JSON report (see fwtrace's schema/report.schema.json).
  returned: when fwtrace ran
  type: dict
outcome:
  description: The run in one word (reached, blocked, no-listener, reply-dropped, unknown).
  returned: when fwtrace ran
  type: str
  sample: blocked
verdict:
  description: The first packet's verdict (accept, drop, reject, ...).
  returned: when fwtrace ran
  type: str
  sample: reject
decided_by:
  description: The rule (or chain policy) that decided the first packet, in the ruleset's own words.
  returned: when fwtrace ran
  type: str
  sample: "-A INPUT -p tcp -m tcp --dport 8080 -j REJECT --reject-with icmp-port-unreachable (a policy: ip filter INPUT policy DROP)"
finding:
  description: The first finding's code, or an empty string.
  returned: when fwtrace ran
  type: str
  sample: blocked-by-rule
evidence:
  description: Where the evidence bundle was left.
  returned: when O(evidence) was given and fwtrace ran
  type: str
cmd:
  description: The command run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
exit_status:
  description: fwtrace's exit status (0 reached, 1 blocked, 5 cleanup incomplete, ...).
  returned: when fwtrace ran
  type: int
plan:
  description: In check mode, the temporary changes a real run would make and remove.
  returned: in check mode
  type: list
  elements: str
'''

import json

from ansible.module_utils.basic import AnsibleModule

VALUED = ('dport', 'proto', 'flags', 'dst', 'src', 'sport', 'count', 'netns', 'via', 'from_netns', 'timeout',
          'ebpf', 'evidence')
SWITCHES = ('local', 'ipv6', 'prove_fix', 'redact')


def command(module):
    p = module.params
    cmd = [p['executable'], 'probe', '--json']
    for name in VALUED:
        if p[name] is not None:
            cmd += ['--' + name.replace('_', '-'), str(p[name])]
    if p['from_url'] is not None:
        cmd += ['--from', p['from_url']]
    if p['log'] is not None:
        cmd += ['--log', p['log']]
    for name in SWITCHES:
        if p[name]:
            cmd.append('--' + name.replace('_', '-'))
    return cmd


def plan(module):
    p = module.params
    out = ['nftables table inet fwtrace_<run id> with trace rules for the probe and its replies']
    if not (p['local'] or p['from_netns'] or p['from_url']):
        out.append('simulated ingress: a veth pair and tc programs (or a local probe when impossible)')
    if p['log']:
        out.append('rate-limited %s rules for the probe' % p['log'].upper())
    if p['ebpf'] == 'on':
        out.append('eBPF programs on kernel tracepoints')
    if p['prove_fix']:
        out.append('the first fix, narrowed to the probe, for the proving run')
    out.append('all removed before fwtrace returns, and proven removed object by object')
    return out


def first_line(text):
    lines = [x.strip() for x in (text or '').splitlines() if x.strip()]
    return lines[-1] if lines else ''


def summary(report):
    pkts = report.get('packets') or [{}]
    decided = pkts[0].get('decided_by') or {}
    findings = report.get('findings') or [{}]
    rule = decided.get('rule') or ''
    if decided and decided.get('rule_number') is None:  # a chain's policy: say whose
        rule = '%s %s %s %s' % (decided.get('family'), decided.get('table'), decided.get('chain'), rule or 'policy')
    return dict(outcome=report.get('outcome', 'unknown'), verdict=pkts[0].get('verdict', ''), decided_by=rule,
                finding=findings[0].get('code', ''))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dport=dict(type='int'),
            proto=dict(type='str', choices=['tcp', 'udp', 'icmp'], default='tcp'),
            flags=dict(type='str'),
            dst=dict(type='str'),
            src=dict(type='str'),
            sport=dict(type='int'),
            count=dict(type='int'),
            netns=dict(type='str'),
            via=dict(type='str'),
            local=dict(type='bool', default=False),
            from_netns=dict(type='str'),
            from_url=dict(type='str'),
            timeout=dict(type='float'),
            ipv6=dict(type='bool', default=False),
            log=dict(type='str', choices=['nflog', 'kmsg']),
            ebpf=dict(type='str', choices=['auto', 'on', 'off']),
            prove_fix=dict(type='bool', default=False),
            evidence=dict(type='path'),
            redact=dict(type='bool', default=False),
            executable=dict(type='str', default='fwtrace'),
        ),
        mutually_exclusive=[('local', 'from_netns', 'from_url')],
        supports_check_mode=True,
    )
    cmd = command(module)
    if module.check_mode:
        module.exit_json(changed=False, cmd=cmd, plan=plan(module))
    rc, out, err = module.run_command(cmd)
    try:
        report = json.loads(out) if out.strip() else None
    except ValueError:
        report = None
    if report is None or rc not in (0, 1, 5):
        module.fail_json(msg=first_line(err) or first_line(out) or 'fwtrace exited with status %d' % rc, exit_status=rc, cmd=cmd,
                         stderr=err)
    # (not `rc`: Ansible fails a task whose result has a non-zero rc, and blocked is data)
    result = dict(cmd=cmd, exit_status=rc, report=report, **summary(report))
    if module.params['evidence']:
        result['evidence'] = module.params['evidence']
    cleanup = report.get('cleanup') or {}
    if not cleanup.get('ok'):
        # what fwtrace changed is not as before: that is a change, and a failure to report
        module.fail_json(msg='fwtrace could not prove its cleanup: %s (run fwtrace cleanup)'
                         % '; '.join(cleanup.get('leftover') or ['unknown']), changed=True, **result)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()

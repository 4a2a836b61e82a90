#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see the fwtrace repository's LICENSE)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: info
short_description: Read-only facts fwtrace needs no probe for
description:
  - Collects, without changing anything on the target, what fwtrace can tell without a probe
    today; C(fwtrace doctor --json --no-load) (what the kernel supports and what fwtrace will
    therefore do), the ruleset snapshot (C(nft list ruleset)) and the listening sockets
    (C(ss -Htlnu)).
  - Not yet available from fwtrace's command line, so not returned - the firewall-manager owners
    of the chains and findings that need no probe (fwtrace reports those in a probe's report,
    M(fwtrace.fwtrace.probe)).
version_added: "0.1.0"
author: fwtrace developers
requirements:
  - fwtrace, nft and ss on the target; root (C(become)) to read the ruleset
options:
  netns:
    description: Read the ruleset and listeners of this network namespace (C(ip netns exec)).
    type: str
  executable:
    description: The fwtrace command on the target.
    type: str
    default: fwtrace
attributes:
  check_mode:
    support: full
    description: The module only reads; check mode runs it in full.
'''

EXAMPLES = r'''
- name: What fwtrace can do on each host, and its ruleset
  fwtrace.fwtrace.info:
  become: true
  register: fw
'''

RETURN = r'''
doctor:
  description: C(fwtrace doctor --json --no-load)'s document.
  returned: always
  type: dict
doctor_rc:
  description: C(fwtrace doctor)'s exit status (0 when probing works there).
  returned: always
  type: int
ruleset:
  description: C(nft list ruleset) of the target (namespace).
  returned: always
  type: str
listeners:
  description: Listening TCP and UDP sockets, as C(ss -Htlnu) lines.
  returned: always
  type: list
  elements: str
'''

import json

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(netns=dict(type='str'), executable=dict(type='str', default='fwtrace')),
        supports_check_mode=True,
    )
    netns = module.params['netns']
    inside = ['ip', 'netns', 'exec', netns] if netns else []

    def run(cmd):
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            lines = [x for x in (err or out).splitlines() if x.strip()]
            module.fail_json(msg='%s: %s' % (' '.join(cmd), lines[-1] if lines else 'exit status %d' % rc), rc=rc)
        return out

    rc, out, err = module.run_command(inside + [module.params['executable'], 'doctor', '--json', '--no-load'])
    try:
        doctor = json.loads(out)
    except ValueError:
        lines = [x for x in (err or out).splitlines() if x.strip()]
        module.fail_json(msg='fwtrace doctor: %s' % (lines[-1] if lines else 'exit status %d' % rc), rc=rc)
    ruleset = run(inside + ['nft', 'list', 'ruleset'])
    listeners = [x for x in run(inside + ['ss', '-Htlnu']).splitlines() if x.strip()]
    module.exit_json(changed=False, doctor=doctor, doctor_rc=rc, ruleset=ruleset, listeners=listeners)


if __name__ == '__main__':
    main()

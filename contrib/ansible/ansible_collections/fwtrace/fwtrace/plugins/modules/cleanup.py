#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see the fwtrace repository's LICENSE)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: cleanup
short_description: Remove what dead fwtrace runs left on the target
description:
  - Runs C(fwtrace cleanup) on the target, which replays the undo journals of fwtrace runs whose
    process is gone and removes their C(inet fwtrace_*) tables. Runs still alive are never touched.
version_added: "0.1.0"
author: fwtrace developers
requirements:
  - fwtrace on the target (O(executable)), run as root (C(become))
options:
  netns:
    description: Only the dead runs that probed this namespace (and stale tables there).
    type: str
  executable:
    description: The fwtrace command on the target.
    type: str
    default: fwtrace
attributes:
  check_mode:
    support: full
    description: Reports the command that would run; nothing is run.
'''

EXAMPLES = r'''
- name: Remove leftovers of interrupted probes
  fwtrace.fwtrace.cleanup:
  become: true
'''

RETURN = r'''
cmd:
  description: The command run (or that would run in check mode).
  returned: always
  type: list
  elements: str
stdout:
  description: What fwtrace cleanup said.
  returned: when it ran
  type: str
  sample: "undid 0 change(s) left by dead fwtrace runs (all namespaces)"
'''

import re

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(netns=dict(type='str'), executable=dict(type='str', default='fwtrace')),
        supports_check_mode=True,
    )
    cmd = [module.params['executable'], 'cleanup']
    if module.params['netns']:
        cmd += ['--netns', module.params['netns']]
    if module.check_mode:
        module.exit_json(changed=False, cmd=cmd, msg='check mode: fwtrace cleanup was not run')
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        lines = [x for x in (err or out).splitlines() if x.strip()]
        module.fail_json(msg=lines[-1] if lines else 'fwtrace cleanup exited with status %d' % rc, rc=rc, cmd=cmd)
    undone = sum(int(n) for n in re.findall(r'undid (\d+) change', out))
    module.exit_json(changed=bool(undone), cmd=cmd, stdout=out)


if __name__ == '__main__':
    main()

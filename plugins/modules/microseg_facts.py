#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r"""
---
module: microseg_facts
short_description: Read the microseg data plane back as facts
version_added: 0.1.0
description:
  - Returns C(ansible_facts.microseg) for the pin directory O(pin_path) - which interfaces
    carry the program on which TC hook, program ids and tags, the runtime configuration
    (policy generation, default actions), map fill, map pressure, and the stats counters
    summed over CPUs.
  - Reads pinned maps directly through the bpf syscall; needs neither BCC nor a compile.
author:
  - ebpf.microseg developers (@ebpf-microseg)
requirements:
  - pyroute2 on the target
  - root on the target (without it the module fails at once saying so)
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  facts:
    support: full
    description: Sets C(ansible_facts.microseg).
  idempotent:
    support: full
    description: Never changes anything.
options:
  pin_path:
    description: Directory on bpffs holding the pinned maps.
    type: path
    default: /sys/fs/bpf/microseg
  state_dir:
    description:
      - Where M(ebpf.microseg.microseg_program) and M(ebpf.microseg.microseg_policy) keep
        their record for the boot restore; read for RV(ansible_facts.microseg.saved_state)
        and RV(ansible_facts.microseg.boot_restore). An empty string skips both.
      - Defaults to E(MICROSEG_STATE_DIR) on the target, then C(/var/lib/microseg).
    type: path
    default: /var/lib/microseg
    version_added: 0.2.0
  top_rules:
    description:
      - How many rules to list in C(rules), those with the most hits first; 0 lists none.
    type: int
    default: 20
  sessions:
    description:
      - Also return up to O(sessions.limit) sessions matching the filter (all filters are
        optional and combine). Counts by protocol, TCP state and action are always returned.
    type: dict
    suboptions:
      limit:
        description: Most sessions to list; 0 lists none.
        type: int
        default: 100
      address:
        description: Container or remote IPv4 address.
        type: str
      port:
        description: Container or remote port.
        type: int
      protocol:
        description: C(tcp), C(udp), C(icmp) or a number.
        type: str
      state:
        description: TCP state, for example C(ESTABLISHED).
        type: str
"""

EXAMPLES = r"""
- name: Read the data plane state
  ebpf.microseg.microseg_facts:

- name: Fail when a filtered interface lost its program
  ansible.builtin.assert:
    that: ansible_facts.microseg.drift | length == 0

# Ad hoc, across the fleet:
#   ansible all -m ebpf.microseg.microseg_facts -a pin_path=/sys/fs/bpf/microseg
"""

RETURN = r"""
msg:
  description: Why there are no facts, when no data plane is pinned at O(pin_path).
  returned: when RV(ansible_facts.microseg.installed) is false
  type: str
  sample: "no microseg data plane is pinned at /sys/fs/bpf/microseg: run ebpf.microseg.microseg_program (or the ebpf.microseg.microseg role) first"
ansible_facts:
  description: Facts under the C(microseg) key.
  returned: always
  type: dict
  contains:
    microseg:
      description: The data plane state.
      type: dict
      returned: always
      contains:
        installed:
          description:
            - Whether the pinned maps exist. When they do not, RV(msg) says so and names any
              other pin directory under C(/sys/fs/bpf) holding a data plane (a mistyped
              O(pin_path)).
          type: bool
          returned: always
        saved_state:
          description:
            - What is recorded for the boot restore under O(state_dir) - C(path), C(program)
              (whether a program record exists), C(policy_generation) and C(policy_rules) of
              the recorded policy.
          type: dict
          returned: unless O(state_dir) is empty
        boot_restore:
          description:
            - The last run of C(microseg-restore) (C(microseg.service), at boot) for this
              instance, null when it never ran - C(result) (C(ok) or C(failed)),
              C(message) on failure, C(started), C(finished), C(seconds), C(kernel),
              C(steps) (program - compiled, headers, interfaces; policy - generation,
              rules), and C(this_boot) (whether it ran since the host last booted).
          type: dict
          returned: unless O(state_dir) is empty
          sample: {"result": "ok", "seconds": 14.2, "kernel": "6.1.0-27-amd64",
                   "this_boot": true, "started": "2026-12-03T08:10:00Z"}
        interfaces:
          description: Per interface, the TC hooks carrying a microseg filter, with program id and tag.
          type: dict
          returned: always
        drift:
          description:
            - Interfaces that should carry the program on every configured hook but do not -
              those the last O(ebpf.microseg.microseg_program#module:interfaces) run attached,
              plus those its names, globs and bridge select now (a container started since).
          type: list
          elements: str
          returned: when installed
        skipped_ports:
          description:
            - Ports of the selected bridge that carry no filter because they are not container
              ports (an uplink NIC, a dummy, a veth whose peer is in the host's namespace).
          type: list
          elements: str
          returned: when installed
        program:
          description: Source hash, kernel headers used, BCC version, map sizes, pinned program ids and tags.
          type: dict
          returned: when installed
        config:
          description: Policy generation, active policy set, default actions and runtime thresholds.
          type: dict
          returned: when installed
        pressure:
          description:
            - Session count, SYN_SENT count, evictions, insertion failures and level (normal,
              warning, critical) as the monitor last wrote them (C(last_check)), plus the
              SYN-flood and map-full drop counters.
          type: dict
          returned: when installed
        endpoints:
          description:
            - Per endpoint (host-side interface, by name) that has opened flows - C(sessions)
              and C(half_open) (the monitor's last recount plus what the data plane counted
              since), its C(session_quota) and C(half_open_quota) (0 - none), the counters
              C(syn_quota_drops) and C(degraded_flows), and C(over_quota) (which quota now
              degrades or drops its new flows; the other endpoints are not affected).
            - For endpoints the L2 trust checks know - C(address), C(prefixlen), C(mac) and
              C(source) (C(given) by O(ebpf.microseg.microseg_program#module:endpoints) or
              C(learned) by microseg-monitor).
          type: dict
          returned: when installed
          sample: {"veth-web": {"ifindex": 7, "sessions": 12, "half_open": 0,
                   "session_quota": 500000, "half_open_quota": 2048, "syn_quota_drops": 0,
                   "degraded_flows": 0, "over_quota": []}}
        stats:
          description: The data plane counters summed over CPUs (the seed's 13 first).
          type: dict
          returned: when installed
        maps:
          description: Per map, max_entries, and for keyed maps entries and fill_percent.
          type: dict
          returned: when installed
        rules:
          description:
            - The O(top_rules) rules with the most hits - C(name), C(policy_id), C(hits),
              C(last_hit) (ISO 8601, UTC). The default action has no counter.
          type: list
          elements: dict
          returned: when installed
        versions:
          description:
            - C(kernel), C(bcc), C(source_sha256) of the program, C(policy_generation), and
              C(kernel_headers) (which headers tree compiled the program, and how it was found).
          type: dict
          returned: always
        gather_seconds:
          description: How long reading the data plane took.
          type: float
          returned: when installed
        sessions:
          description:
            - Session counts by protocol, TCP state and action; with O(sessions), a bounded
              list of matching sessions (C(list), C(matched), C(truncated)).
          type: dict
          returned: when installed
"""

import os

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _privilege
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pin_path=dict(type="path", default="/sys/fs/bpf/microseg"),
            state_dir=dict(type="path", default=_saved_state.DEFAULT_STATE_DIR,
                           fallback=(env_fallback, [_saved_state.STATE_DIR_ENV])),
            top_rules=dict(type="int", default=20),
            sessions=dict(type="dict", options=dict(
                limit=dict(type="int", default=100),
                address=dict(type="str"),
                port=dict(type="int"),
                protocol=dict(type="str"),
                state=dict(type="str"),
            )),
        ),
        supports_check_mode=True,
    )
    _privilege.require_root(module, "microseg_facts", "it reads the pinned maps under %s"
                            % module.params["pin_path"])
    if not _netlink.HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"),
                         exception=str(_netlink.PYROUTE2_IMPORT_ERROR))
    ipr = _netlink.open_route()
    try:
        wanted = module.params["sessions"] or {}
        session_filter = dict((k, v) for k, v in wanted.items() if k != "limit" and v)
        if session_filter.get("protocol", "").isdigit():
            session_filter["protocol"] = int(session_filter["protocol"])
        facts = _facts.gather(module.params["pin_path"], ipr, session_filter,
                              wanted.get("limit", 0) if wanted else 0,
                              module.params["top_rules"])
    except OSError as exc:
        module.fail_json(msg="cannot read the microseg maps under %s: %s"
                         % (module.params["pin_path"], exc))
    finally:
        ipr.close()
    if module.params["state_dir"]:
        facts["saved_state"] = _saved_state.summary(module.params["state_dir"],
                                                    module.params["pin_path"])
        facts["boot_restore"] = _saved_state.restore_result(module.params["state_dir"],
                                                            module.params["pin_path"])
    output = {"changed": False, "ansible_facts": {"microseg": facts}}
    if not facts["installed"]:
        output["msg"] = not_installed_message(module.params["pin_path"])
    module.exit_json(**output)


def not_installed_message(pin_path, bpffs="/sys/fs/bpf"):
    """Why there are no facts, and where a data plane is if pin_path is mistyped."""
    found = []
    try:
        for name in sorted(os.listdir(bpffs)):
            if os.path.exists(os.path.join(bpffs, name, "config_map")):
                found.append(os.path.join(bpffs, name))
    except OSError:
        pass
    found = [path for path in found if path != pin_path.rstrip("/")]
    text = ("no microseg data plane is pinned at %s: run ebpf.microseg.microseg_program "
            "(or the ebpf.microseg.microseg role) first" % pin_path)
    if found:
        text += "; one is pinned at %s (pin_path?)" % ", ".join(found[:5])
    return text


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r"""
---
module: microseg_explain
short_description: Explain what the microseg policy does to a flow, and which rule decides
version_added: 0.2.0
description:
  - For each flow in O(flows) and each direction, says what the first packet gets (allow,
    deny or log), which rule decides it (or the default action), and every rule that matches
    in rank order with why it ranks there - as C(cilium policy trace) does.
  - "Two answers, compared: the reference model (the verdict rule of docs/architecture.md
    section 3) over the policy the host holds (the source stored with the maps by
    M(ebpf.microseg.microseg_policy) for the active policy set), and the kernel's - the
    same lookups the program makes (the exact 5-tuple hash, then the longest-prefix chain),
    made in the pinned maps of the active set, the policy id found named by the policy."
  - When the two disagree the flow's RV(flows[].egress.agree) is false, the disagreement is
    listed in RV(disagreements) and the module warns.
  - A direction is the packet as one hook of the program sees it - C(egress) at the
    sender's veth (the flow's C(src) is the container), C(ingress) at the receiver's
    (its C(dst) is the container); the 5-tuple is the same.
  - Reads only; never changes anything. Sessions and counters are left alone (an
    established flow keeps the verdict it was given until a converge makes it decide again).
author:
  - ebpf.microseg developers (@ebpf-microseg)
requirements:
  - netaddr on the target
  - the microseg program loaded by M(ebpf.microseg.microseg_program)
  - root on the target (without it the module fails at once saying so)
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  idempotent:
    support: full
    description: Never changes anything.
options:
  pin_path:
    description: Pin directory of the microseg program.
    type: path
    default: /sys/fs/bpf/microseg
  flows:
    description:
      - The flows to explain. Each is a dict with C(src) and C(dst) (IPv4 addresses),
        C(protocol) (C(tcp), C(udp), C(icmp) or an IANA number 0-255), C(dst_port)
        (required for tcp and udp, not allowed for other protocols), C(src_port) (default
        0) and C(direction) (C(egress), C(ingress) or C(both) - the default - to explain
        each direction).
      - "Bad input fails before anything is read, with every problem at once, each naming
        the flow and the field, for example flows[1].dst_port 70000: port 70000 is out of
        range 0-65535."
    type: list
    elements: dict
    required: true
notes:
  - The model's and the kernel's answers come from one read of the active set; a converge
    that switches sets during it makes the module read again.
"""

EXAMPLES = r"""
- name: What happens to web -> db on postgres, and which rule decides it?
  ebpf.microseg.microseg_explain:
    flows:
      - {src: 198.18.1.7, dst: 198.18.2.10, protocol: tcp, dst_port: 5432}
  register: why

- name: Fail when the kernel's maps do not decide as the policy says
  ansible.builtin.assert:
    that: why.agree
    fail_msg: "{{ why.disagreements | map(attribute='message') | list }}"

- name: Only the container's outgoing side, with a source port
  ebpf.microseg.microseg_explain:
    pin_path: /sys/fs/bpf/tenant-a
    flows:
      - {src: 198.18.1.7, dst: 198.18.2.10, protocol: udp, dst_port: 53, src_port: 40000,
         direction: egress}
      - {src: 198.18.1.7, dst: 198.18.2.10, protocol: icmp, direction: egress}

# Ad hoc:
#   ansible localhost -m ebpf.microseg.microseg_explain -a '{"flows": [{"src": "198.18.1.7",
#     "dst": "198.18.2.10", "protocol": "tcp", "dst_port": 5432}]}'
"""

RETURN = r"""
flows:
  description:
    - One entry per flow of O(flows), in order - C(src), C(dst), C(protocol), C(src_port),
      C(dst_port), C(direction) as parsed, C(verdict) (what the flow gets across the
      directions explained - deny if one denies, else log if one logs, else allow), and per
      direction explained (C(egress), C(ingress)) a dict described below.
  returned: always
  type: list
  elements: dict
  contains:
    egress:
      description: The packet at the sender's hook; C(ingress), at the receiver's, has the same fields.
      type: dict
      returned: when the flow's direction is egress or both
      contains:
        verdict:
          description: What the reference model decides - C(allow), C(deny) or C(log).
          type: str
        decided_by:
          description: The rule that decides, or C(default) for the direction's default action.
          type: str
        policy_id:
          description: That rule's policy id (0 for the default).
          type: int
        container:
          description: The container's address in this direction (src for egress, dst for ingress).
          type: str
        matching_rules:
          description:
            - Every rule that matches, best first - C(name), C(action), C(policy_id),
              C(position) (in the stored policy), C(tier_name) (when the rule names a tier),
              C(rank), C(differs_on) and C(why).
            - C(rank) holds the fields compared left to right, bigger wins - C(tier),
              C(exact), C(remote_prefix), C(local_prefix), C(dst_port) and C(src_port)
              (2 single, 1 range, 0 any), C(protocol) (1 named, 0 any), C(action) (the tie
              - 2 deny, 1 log, 0 allow).
            - C(differs_on) is the first field on which the rule differs from the one ranked
              just above it (the first rule, from the second); C(why) says it in words.
          type: list
          elements: dict
          sample: [{"name": "web-to-db", "action": "allow", "differs_on": "remote_prefix",
                    "why": "decides: beats 'quarantine-out' on remote_prefix (32 > 0: the
                    longer prefix on the remote peer wins)", "rank": {"tier": 0, "exact": 0,
                    "remote_prefix": 32, "local_prefix": 24, "dst_port": 2, "src_port": 0,
                    "protocol": 1, "action": 0}}]
        kernel:
          description:
            - What the pinned maps of the active set decide - C(verdict), C(decided_by)
              (the rule of that policy id, C(default), or the id when no rule has it),
              C(policy_id), C(decided_at) (C(policy_map), C(ip_range_map),
              C(local_range_map), C(port_range_map), C(sport_range_map) or C(default)) and
              C(lookups) (one line per lookup made, with what it found).
          type: dict
        agree:
          description: Whether the kernel's verdict and policy id are the model's.
          type: bool
disagreements:
  description:
    - Every flow direction where the kernel's maps and the model differ - C(flow) (its
      index in O(flows)), C(direction), C(model) and C(kernel) (C(verdict), C(decided_by)),
      and C(message).
  returned: always
  type: list
  elements: dict
agree:
  description: No disagreement.
  returned: always
  type: bool
generation:
  description: The policy generation in force (config_map).
  returned: always
  type: int
active_set:
  description: The active policy set (0 or 1) read.
  returned: always
  type: int
default_action:
  description: The default action per direction the kernel holds (config_map).
  returned: always
  type: dict
  sample: {"egress": "deny", "ingress": "deny"}
rules:
  description: How many rules the stored policy has.
  returned: always
  type: int
errors:
  description: When O(flows) is refused, one line per problem.
  returned: on failure, when the input is refused
  type: list
  elements: str
  sample: ["flows[0].dst_port 70000: port 70000 is out of range 0-65535"]
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.ebpf.microseg.plugins.module_utils import _explain
from ansible_collections.ebpf.microseg.plugins.module_utils import _privilege

try:
    import netaddr  # noqa: F401  pylint: disable=unused-import
    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError:
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pin_path=dict(type="path", default="/sys/fs/bpf/microseg"),
            flows=dict(type="list", elements="dict", required=True),
        ),
        supports_check_mode=True,
    )
    _privilege.require_root(module, "microseg_explain", "it reads the pinned policy maps "
                            "under %s" % module.params["pin_path"])
    if not HAS_NETADDR:
        module.fail_json(msg=missing_required_lib("netaddr"), exception=NETADDR_IMPORT_ERROR)
    try:
        result = _explain.run(module.params["pin_path"], module.params["flows"])
    except _explain.ExplainError as exc:
        if exc.errors:
            module.fail_json(msg=str(exc), errors=exc.errors)
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="cannot read the microseg maps under %s: %s"
                         % (module.params["pin_path"], exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

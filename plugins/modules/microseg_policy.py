#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r"""
---
module: microseg_policy
short_description: Converge the microseg policy maps from rules and segments
version_added: 0.1.0
description:
  - Compiles rules and named segments into the pinned policy maps of the microseg program
    (see M(ebpf.microseg.microseg_program)) so that the kernel decides each new flow with
    one hash lookup and at most four longest-prefix lookups, whatever the rule count.
  - "The verdict for the first packet of a flow: among the rules whose direction, addresses,
    protocol and ports match, the most specific wins - an exact 5-tuple rule, then the
    longer prefix on the remote peer, then the longer prefix on the container's side, then
    single port over range over any (destination port first, then source port), then a
    specific protocol over any; a tie goes deny over log over allow; no match takes the
    default action of the direction."
  - The converge is atomic. The new rule set is written beside the active one and switched
    in with one map write that also bumps the policy generation, so established flows are
    re-evaluated at their next packet (a new deny cuts them). A run killed midway leaves the
    old policy fully in force. Concurrent runs on one host serialize on a lock.
  - Runs that would change nothing write nothing and report C(changed=false).
  - "Each rule gets a policy id, which hit counters, sessions and log events carry. Ids are
    distinct and a rule keeps its id as long as its name stays in the policy (the host
    keeps the table beside the maps and in the record under O(state_dir)); a new name
    takes the crc32 of the name, or the next free id when another rule holds that one. A
    rule that takes the id of a removed rule starts with zero hits."
  - "Bad input is refused before anything on the host is touched, with every problem of the
    run at once (the first 20, then how many more): each names the rule by its name and its
    0-based position, the field, the item and the bad value, for example
    rule 'web-to-db' (rules[3]): dst_ports[0] '5432/tcp': not a port or a low-high range.
    O(rule_sources) makes the position the one in the variables the list was built from."
author:
  - ebpf.microseg developers (@ebpf-microseg)
requirements:
  - netaddr on the target
  - the microseg program loaded by M(ebpf.microseg.microseg_program) (except for O(state=rendered)
    and O(state=parsed))
  - root on the target (except for O(state=rendered) and O(state=parsed)); without it the
    module fails at once saying so
attributes:
  check_mode:
    support: full
    description: Compiles and compares, writes nothing; RV(after) and RV(entry_changes) are the prediction.
  diff_mode:
    support: full
    description: Shows rules, segments and default actions before and after, not map bytes.
  idempotent:
    support: full
    description: A second run with the same input reports C(changed=false) and writes nothing.
options:
  rules:
    description:
      - The rules. Each is a dict with C(name) (unique; the rule's stable identity),
        C(direction) (C(egress), C(ingress) or C(both), seen from the container),
        C(src) and C(dst) (CIDRs or segment names, a string or a list; omitted means any),
        C(protocol) (C(tcp), C(udp), C(icmp), C(any) or an IANA number; default C(any)),
        C(dst_ports) and C(src_ports) (tcp/udp only; ports or C("low-high") ranges;
        omitted means any), C(action) (C(allow), C(deny) or C(log)) and C(tier) (one of
        O(tiers); omitted means the last tier).
      - For O(state=deleted) only C(name) is needed.
    type: list
    elements: dict
    default: []
  rule_sources:
    description:
      - How O(rules) was put together from several lists, in order, so that messages about
        a rule name its place in the list it was written in (C(microseg_host_rules[0]))
        rather than in O(rules) (C(rules[7])).
      - The counts must add up to the length of O(rules).
      - The role C(ebpf.microseg.microseg) passes C(microseg_rules), C(microseg_group_rules)
        and C(microseg_host_rules) here.
    type: list
    elements: dict
    version_added: 0.1.0
    suboptions:
      name:
        description: What the list is called where it was written (a variable name).
        type: str
        required: true
      count:
        description: How many rules of O(rules) came from it (the next ones in order).
        type: int
        required: true
  tiers:
    description:
      - Ordered tiers, highest first. A packet is decided by the highest tier that has a rule
        matching it; within that tier the most specific rule wins as without tiers; a tier
        with no matching rule passes the packet on to the next; after the last tier the
        default action decides. Rules name their tier in C(tier); a rule that names none is
        in the last tier. Without tiers every rule is in one tier, as before.
      - Use a top tier for what must win over everything, such as a quarantine (see
        EXAMPLES). To end a tier with a verdict instead of passing, give it a catch-all rule
        (no src, dst or protocol) with that action.
      - The lookup cost does not grow with the number of tiers - they are folded into the
        same compiled lookups (one hash, at most four LPM steps).
      - Kept like O(segments) - O(state=merged), O(state=replaced) and O(state=overridden)
        set them when given; otherwise the held tiers stay.
    type: list
    elements: str
    version_added: 0.2.0
  segments:
    description:
      - Named address sets, name to list of CIDRs. Overlapping CIDRs are merged.
      - With O(state=merged) and O(state=replaced) they are added to the segments the host
        holds; with O(state=overridden) they replace them when given.
    type: dict
  default_action:
    description:
      - Verdict when no rule matches, per direction. Unchanged when omitted (a host starts
        with C(allow) both ways, so attaching the program never cuts it off by itself).
    type: dict
    suboptions:
      egress:
        description: Traffic the container sends.
        type: str
        choices: [allow, deny]
      ingress:
        description: Traffic the container receives.
        type: str
        choices: [allow, deny]
  state:
    description:
      - C(merged) adds the given rules and updates rules of the same name field by field.
      - C(replaced) replaces each rule of the same name whole, and adds new ones.
      - C(overridden) leaves the host with exactly the given rules.
      - C(deleted) removes the rules named, or every rule when none is given.
      - C(gathered) returns what the host holds, changing nothing (the empty policy, with a
        warning, where no program is pinned).
      - C(rendered) compiles offline and returns the map entries, touching no host state.
      - C(parsed) reads the policy from O(running_config), checks it as O(rules) are checked
        and returns it as RV(parsed), touching no host state (no root, no program needed).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered, parsed]
    default: merged
  running_config:
    description:
      - The policy as text, for O(state=parsed); required there and only used there.
      - Either what O(state=gathered) returns, as JSON or YAML (RV(gathered) itself, the
        whole registered result, or a list of rules), or the line spelling that
        RV(running_config) holds - one statement per line, C(#) starts a comment.
      - "C(default egress deny); C(tiers incident app); C(segment db 198.18.2.10/32,
        198.18.2.11/32); C(rule web-to-db both src web dst db proto tcp dport 5432 allow). A rule
        line is C(rule NAME) then, in any order, a direction (C(egress), C(ingress), C(both)),
        an action (C(allow), C(deny), C(log)), C(tier T), C(src A, B), C(dst A, B), C(proto P),
        C(sport PORTS) and C(dport PORTS) (ports and C(low-high) ranges, comma separated).
        Words split as in a POSIX shell: quote a name with spaces or commas."
      - Messages about a rule name the line it is on, as C(running_config line 7) where other
        runs say C(rules[3]).
    type: str
    version_added: 0.2.0
  pin_path:
    description: Pin directory of the microseg program.
    type: path
    default: /sys/fs/bpf/microseg
  state_dir:
    description:
      - Where the host keeps what it converged for the boot restore (C(microseg.service),
        installed by the role C(ebpf.microseg.microseg)), as M(ebpf.microseg.microseg_program)
        does for the program.
      - After every converge that changed the maps, and whenever the record is missing or
        says something else than the maps hold, the policy the host now holds (normalized)
        is written to C(STATE_DIR/instances/<pin path with dashes>/policy.json), atomically
        and under the host lock; that alone reports C(changed). Check mode writes nothing;
        O(state=gathered) and O(state=rendered) never write.
      - An empty string keeps no record. Defaults to E(MICROSEG_STATE_DIR) on the target,
        then C(/var/lib/microseg).
    type: path
    default: /var/lib/microseg
    version_added: 0.2.0
notes:
  - During the switch each policy map holds the active and the new policy side by side, so
    it must have room for both; size the maps with M(ebpf.microseg.microseg_program).
"""

EXAMPLES = r"""
- name: Default deny, web may reach the database
  ebpf.microseg.microseg_policy:
    segments:
      web: [10.10.1.0/24]
      db: [10.10.2.10/32, 10.10.2.11/32]
    default_action: {egress: deny, ingress: deny}
    rules:
      - name: web-to-db
        direction: both
        src: [web]
        dst: [db]
        protocol: tcp
        dst_ports: [5432]
        action: allow
    state: overridden

# A quarantine must win over every allow, however specific (web-to-db names db more
# precisely than "any"): put it in a tier above the others.
- name: Quarantine one container
  ebpf.microseg.microseg_policy:
    tiers: [incident, app]
    rules:
      - {name: quarantine-out, tier: incident, direction: egress, src: 10.10.1.7/32, action: deny}
      - {name: quarantine-in, tier: incident, direction: ingress, dst: 10.10.1.7/32, action: deny}

- name: Lift the quarantine
  ebpf.microseg.microseg_policy:
    rules: [{name: quarantine-out}, {name: quarantine-in}]
    state: deleted

- name: Rules from two lists; errors name microseg_host_rules[0], not rules[3]
  ebpf.microseg.microseg_policy:
    rules: "{{ microseg_rules + microseg_host_rules }}"
    rule_sources:
      - {name: microseg_rules, count: "{{ microseg_rules | length }}"}
      - {name: microseg_host_rules, count: "{{ microseg_host_rules | length }}"}
    state: overridden

- name: Check a policy without touching the host (needs no root, no program)
  ebpf.microseg.microseg_policy:
    rules: "{{ microseg_rules }}"
    segments: "{{ microseg_segments }}"
    state: rendered
  delegate_to: localhost
  become: false

- name: What does this host enforce?
  ebpf.microseg.microseg_policy:
    state: gathered
  register: enforced

- name: Keep it as text (one line per rule), for review or a later parsed/overridden run
  ansible.builtin.copy:
    content: "{{ enforced.running_config }}"
    dest: "policies/{{ inventory_hostname }}.rules"
    mode: "0644"
  delegate_to: localhost

- name: Read a saved policy back into rules, checked, without a host
  ebpf.microseg.microseg_policy:
    state: parsed
    running_config: "{{ lookup('ansible.builtin.file', 'policies/web1.rules') }}"
  delegate_to: localhost
  become: false
  register: saved

- name: Put it back on the host (a rollback to the saved text)
  ebpf.microseg.microseg_policy:
    rules: "{{ saved.parsed.rules }}"
    segments: "{{ saved.parsed.segments }}"
    default_action: "{{ saved.parsed.default_action }}"
    tiers: "{{ saved.parsed.tiers | default(omit) }}"
    state: overridden

- name: The same from inline lines
  ebpf.microseg.microseg_policy:
    state: parsed
    running_config: |
      default egress deny
      default ingress deny
      segment db 10.10.2.10/32, 10.10.2.11/32
      rule web-to-db both src 10.10.1.0/24 dst db proto tcp dport 5432 allow
  delegate_to: localhost
  become: false
"""

RETURN = r"""
before:
  description: Rules, segments and default actions the host held.
  returned: always except rendered and parsed
  type: dict
after:
  description: Rules, segments and default actions the host holds now (predicted in check mode).
  returned: always except parsed
  type: dict
generation:
  description: The policy generation in force after the run (predicted in check mode).
  returned: always except rendered and parsed
  type: int
entry_changes:
  description: Per policy map, entries added, removed and changed against the active set, and the new total.
  returned: always except gathered and parsed
  type: dict
  sample: {"policy_map": {"added": 2, "removed": 0, "changed": 0, "entries": 2}}
stale_entries_removed:
  description:
    - Entries a run killed before its switch had left in the inactive policy set, removed
      by this run (counted, not removed, in check mode).
  returned: always except gathered, rendered and parsed
  type: int
  sample: 0
rendered:
  description: The compiled map entries, per map, as dicts of key and value fields.
  returned: when state is rendered
  type: dict
gathered:
  description: The rules the host holds (same as RV(after)).
  returned: when state is gathered
  type: dict
running_config:
  description:
    - The policy the host holds in the line spelling of O(running_config), one statement per
      line; O(state=parsed) reads it back to the same RV(gathered).
  returned: when state is gathered
  type: str
  sample: |
    default egress deny
    default ingress deny
    segment db 10.10.2.10/32, 10.10.2.11/32
    rule web-to-db both src 10.10.1.0/24 dst db proto tcp dport 5432 allow
parsed:
  description: The policy O(running_config) holds, normalized as RV(gathered) returns it.
  returned: when state is parsed
  type: dict
  sample: {"rules": [{"name": "web-to-db", "direction": "both", "src": ["10.10.1.0/24"], "dst": ["db"],
           "protocol": "tcp", "dst_ports": ["5432"], "action": "allow"}],
           "segments": {"db": ["10.10.2.10/32", "10.10.2.11/32"]},
           "default_action": {"egress": "deny", "ingress": "deny"}}
saved_state:
  description: The record for the boot restore that the run wrote (would write, in check mode).
  returned: when the record was missing or outdated
  type: str
  sample: /var/lib/microseg/instances/sys-fs-bpf-microseg
errors:
  description: When the input is refused, one line per problem (the first 20, then how many more).
  returned: on failure, when the policy is refused
  type: list
  elements: str
  sample: ["rule 'web-to-db' (rules[3]): dst_ports[0] 70000: port 70000 is out of range 0-65535"]
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.plugins.module_utils import _privilege
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state

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
            rules=dict(type="list", elements="dict", default=[]),
            rule_sources=dict(type="list", elements="dict", options=dict(
                name=dict(type="str", required=True),
                count=dict(type="int", required=True),
            )),
            segments=dict(type="dict"),
            tiers=dict(type="list", elements="str"),
            default_action=dict(type="dict", options=dict(
                egress=dict(type="str", choices=["allow", "deny"]),
                ingress=dict(type="str", choices=["allow", "deny"]),
            )),
            state=dict(type="str", default="merged",
                       choices=["merged", "replaced", "overridden", "deleted", "gathered",
                                "rendered", "parsed"]),
            running_config=dict(type="str"),
            pin_path=dict(type="path", default="/sys/fs/bpf/microseg"),
            state_dir=dict(type="path", default=_saved_state.DEFAULT_STATE_DIR,
                           fallback=(env_fallback, [_saved_state.STATE_DIR_ENV])),
        ),
        supports_check_mode=True,
        required_if=[("state", "parsed", ["running_config"])],
    )
    if module.params["running_config"] is not None and module.params["state"] != "parsed":
        module.fail_json(msg="running_config is only read with state=parsed (state is %s)"
                         % module.params["state"])
    if module.params["state"] not in ("rendered", "parsed"):
        _privilege.require_root(module, "microseg_policy",
                                "it locks and opens the pinned policy maps under %s (only "
                                "state=rendered and state=parsed work without root)" % module.params["pin_path"])
    if not HAS_NETADDR:
        module.fail_json(msg=missing_required_lib("netaddr"), exception=NETADDR_IMPORT_ERROR)
    try:
        result = _policy.run(module.params, module.check_mode, module._diff)
    except _policy.PolicyInputError as exc:
        if exc.errors:
            module.fail_json(msg=str(exc), errors=exc.errors)
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r"""
---
module: microseg_program
short_description: Compile, pin and attach the microseg eBPF TC program
version_added: 0.1.0
description:
  - Compiles C(files/bpf/microseg.bpf.c) of this collection with BCC on the target, pins its
    maps and programs under O(pin_path), and attaches the programs to the TC hooks of the
    selected interfaces (the host-side ends of container veth pairs).
  - The TC C(ingress) hook of a host-side veth sees what the container sends (policy
    direction C(egress)); the TC C(egress) hook sees what it receives (direction C(ingress)).
  - Compiles only when the source or a compile parameter changed; the cache key is stored
    with the pins. A second identical run changes nothing and compiles nothing.
  - Replacing a program is a netlink filter replace at a fixed priority and handle, so no
    packet meets an unfiltered hook; maps are reused through their pins, so sessions and
    policy survive an upgrade. If a map size changes, entries are copied into the new map.
  - When the running kernel has no matching headers package, the closest installed
    C(linux-headers-*) tree is used (Debian's split arch and common trees are merged into
    a cache directory for BCC); RV(headers) reports which.
  - The action plugin of the same name sends the C source from the controller, so the
    module works ad hoc on a host that never ran a role.
author:
  - ebpf.microseg developers (@ebpf-microseg)
requirements:
  - BCC python bindings on the target (Debian/Ubuntu C(python3-bpfcc), RHEL C(python3-bcc))
  - pyroute2 on the target
  - kernel headers, or a nearby C(linux-headers-*) package (see description)
  - root on the target (without it the module fails at once saying so)
attributes:
  check_mode:
    support: full
    description: Reports the planned actions and the predicted state without compiling or attaching.
  diff_mode:
    support: full
    description: Shows attachments, compile cache key, map sizes and runtime settings before and after.
  idempotent:
    support: full
    description: A second run with the same parameters reports C(changed=false) and does not compile.
options:
  interfaces:
    description:
      - Interface names or shell globs (for example C(veth*)). A name without glob characters
        that does not exist is an error; a glob may match nothing.
    type: list
    elements: str
    default: []
  bridge:
    description:
      - Attach to every container port of this Linux bridge - a veth (or netkit) whose peer
        lives in another network namespace. The bridge itself is never attached.
      - Other ports (the host's uplink NIC on br0/vmbr0, a bond, a dummy, a tap, a veth whose
        peer stays in the bridge's namespace) are skipped with a warning and listed in
        RV(skipped_interfaces); name one in O(interfaces) to filter it anyway. The monitor's
        auto-attach follows the same rule.
    type: str
  hooks:
    description:
      - TC hooks to attach to. C(ingress) filters traffic the container sends, C(egress)
        traffic it receives.
    type: list
    elements: str
    choices: [ingress, egress]
    default: [ingress, egress]
  state:
    description:
      - C(present) attaches to exactly the selected interfaces and hooks (detaching from
        interfaces no longer selected).
      - C(absent) detaches everywhere, removes clsact qdiscs this module added (only when no
        other filter is left on them) and unpins everything under O(pin_path).
    type: str
    choices: [present, absent]
    default: present
  pin_path:
    description: Directory on bpffs for the pinned maps and programs. bpffs is mounted if needed.
    type: path
    default: /sys/fs/bpf/microseg
  state_dir:
    description:
      - Where the host keeps what it converged, so that C(microseg.service) (installed by the
        role C(ebpf.microseg.microseg)) restores the program at boot, before the container
        runtimes start, without an Ansible run.
      - With O(state=present) the parameters and the BPF source are written to
        C(STATE_DIR/instances/<pin path with dashes>/program.json) after the kernel side
        succeeded (atomically - write, fsync, rename); a run that only finds the record
        missing or different writes it and reports C(changed). O(state=absent) removes the
        instance's records. Check mode writes nothing.
      - An empty string keeps no record (nothing is restored at boot).
      - Defaults to the environment variable E(MICROSEG_STATE_DIR) on the target, then
        C(/var/lib/microseg).
    type: path
    default: /var/lib/microseg
    version_added: 0.2.0
  policy_map_size:
    description: Entries of C(policy_map), exact 5-tuple rules.
    type: int
    default: 100000
  range_map_size:
    description: Entries of each CIDR/port LPM map.
    type: int
    default: 10000
  session_map_size:
    description: Entries of the session LRU map.
    type: int
    default: 1000000
  frag_map_size:
    description: Entries of the IPv4 fragment verdict map.
    type: int
    default: 8192
  rule_stats_size:
    description: Entries of the per-rule hit counter map.
    type: int
    default: 65536
  endpoint_map_size:
    description: Entries of the anti-spoofing endpoint map.
    type: int
    default: 4096
  log_ring_pages:
    description: Pages of the LOG event ring buffer (a power of two).
    type: int
    default: 16
  syn_flood_threshold:
    description:
      - New SYNs are dropped while this many sessions are in SYN_SENT. C(0) disables the guard.
    type: int
    default: 10000
  pressure_warning_percent:
    description: Session map fill at which the pressure level becomes C(warning).
    type: int
    default: 70
  pressure_critical_percent:
    description:
      - Session map fill at which the pressure level becomes C(critical) and new flows are
        degraded (allowed flows pass untracked, DNS and ICMP pass as O(degraded_passthrough)
        says, the rest is dropped). C(0) disables the pressure levels.
    type: int
    default: 90
  degraded_passthrough:
    description:
      - Which denied first packets of DNS (destination port 53) and ICMP still pass while new
        flows are degraded (critical pressure, or their endpoint over
        O(endpoint_session_quota)). The seed passes DNS and ICMP so that name resolution and
        path MTU discovery survive a full session table.
      - C(default_only) passes only what the B(default action) denied; a deny rule holds
        whatever the pressure, and a quarantined container cannot reach DNS (a tunnel out)
        during a flood it may have caused itself. Counted as C(degraded_passthrough), and
        the held packets as C(degraded_rule_drops).
      - C(always) is the seed's rule (deny rules too), availability over isolation.
      - C(never) drops every denied packet, isolation over availability; under default deny a
        full session table then also stops new DNS lookups.
    type: str
    choices: [default_only, always, never]
    default: default_only
  endpoint_half_open_quota:
    description:
      - Per endpoint (host-side interface), the TCP sessions it may hold in SYN_SENT. Over
        it, that endpoint's new SYNs are dropped (C(endpoint_syn_drops)) while every other
        endpoint still connects, so one container's SYN flood cannot trip the host-wide
        O(syn_flood_threshold) for all. Counted by the data plane and recounted by the
        monitor every tick. C(0) disables the quota.
      - The default is far above what an ordinary workload keeps half-open, and below the
        host-wide threshold so that the quota acts first.
    type: int
    default: 2048
  endpoint_session_quota:
    description:
      - Per endpoint, the sessions it may hold. Over it, that endpoint's new flows are
        degraded as under critical pressure (allowed flows pass untracked, denied ones drop
        but for O(degraded_passthrough)) and counted (C(endpoint_degraded)); the other
        endpoints keep full tracking.
      - Unset means half of O(session_map_size), so no single endpoint can push the host to
        the warning or critical level alone. C(0) disables the quota.
    type: int
  ipv6:
    description: What happens to IPv6 frames.
    type: str
    choices: [allow, drop]
    default: drop
  other_l3:
    description:
      - What happens to frames that are neither IPv4, IPv6 nor ARP.
      - VLAN-tagged frames (802.1Q and 802.1ad) follow this mode too, whether the tag is in
        the frame or offloaded to the packet's metadata (as veth does); their inner packet
        is never policed as the container's own traffic (C(vlan_tagged) counts them).
    type: str
    choices: [allow, drop]
    default: drop
  log_rate:
    description: Maximum LOG events per second emitted to the ring buffer.
    type: int
    default: 100
  endpoints:
    description:
      - Anti-spoofing and L2 trust. Interface name to the IPv4 address of the container
        behind it, optionally with its prefix length (C(198.18.1.10/24)).
      - Sent by the container - an IPv4 packet from any other source address is dropped
        (C(spoof_drops)); so is an ARP packet whose sender address is another one
        (C(arp_spoof_drops)), so a container cannot claim a neighbour's address and receive
        its traffic. ARP probes (sender 0.0.0.0) and gratuitous ARP for its own address pass.
      - Received by the container - an IPv4 packet for another address than its own, the
        limited broadcast, its subnet's broadcast (when the prefix is given) or a multicast
        group is dropped before any session is made (C(not_for_endpoint)), as the bridge floods
        unknown unicast to every port, and such frames are not this container's. ARP is
        handed over only when it asks for its address or is gratuitous.
      - Interfaces not listed are not checked (unless O(learn_endpoints)). Empty turns the
        checks off.
    type: dict
    default: {}
  learn_endpoints:
    description:
      - Have microseg-monitor learn each container's address for the O(endpoints) checks -
        the first global IPv4 address, its prefix and the MAC of the veth peer, read inside
        the peer's network namespace every tick (a container changing its address is
        followed within one tick), for every veth whose peer lives in another namespace.
      - An address given in O(endpoints) wins over a learned one. A container with several
        IPv4 addresses on one interface can send only from the first; give it explicitly.
    type: bool
    default: false
  bpf_source:
    description:
      - Internal. The C source files, filled in by the action plugin from the collection's
        C(files/bpf/). Do not set it.
    type: dict
notes:
  - Until a policy is converged with M(ebpf.microseg.microseg_policy) the default action in
    both directions is C(allow), so attaching never cuts a host off by itself.
  - Every instance attaches at TC priority 1, handle 0x6d73, and names its filters
    C(<program>@<pin_path>). Several instances (different O(pin_path)) can share a network
    namespace on different interfaces; a run that selects an interface another instance holds
    fails and names that instance's pin path, and O(state=absent) detaches only its own filters.
"""

EXAMPLES = r"""
- name: Filter every port of the container bridge
  ebpf.microseg.microseg_program:
    bridge: br0

- name: Filter container veths by name, with a smaller session table
  ebpf.microseg.microseg_program:
    interfaces: ["veth*", "cni0-*"]
    session_map_size: 262144

- name: Remove the program, its filters and pins
  ebpf.microseg.microseg_program:
    state: absent
"""

RETURN = r"""
actions:
  description:
    - What the run did (in check mode, would do), in order. Besides the kernel's (compile,
      attach, replace, detach, write_config, ...), C(save_state) writes the boot restore's
      record under O(state_dir) and C(remove_saved_state) removes it.
  returned: always
  type: list
  elements: dict
  sample: [{"action": "compile", "reason": "no pinned program"},
           {"action": "save_state", "path": "/var/lib/microseg/instances/sys-fs-bpf-microseg"}]
interfaces:
  description: Attachment per interface after the run, by TC hook.
  returned: always
  type: dict
  sample: {"veth-web1": {"ingress": {"prog_id": 42, "tag": "a1b2c3d4e5f60718",
           "program": "microseg_from_container"}, "egress": {"prog_id": 43, "tag": "...",
           "program": "microseg_to_container"}}}
programs:
  description: The pinned programs, by function.
  returned: always
  type: dict
  sample: {"microseg_from_container": {"id": 42, "tag": "a1b2c3d4e5f60718"}}
compiled:
  description: Whether BCC compiled the program in this run.
  returned: always
  type: bool
compile_seconds:
  description: Time BCC took to compile and load.
  returned: when compiled
  type: float
headers:
  description: Kernel headers BCC used (kind installed, kheaders or fallback; path; version).
  returned: when compiled
  type: dict
cache_key:
  description: Hash of source and compile parameters stored with the pins.
  returned: when state is present
  type: str
skipped_interfaces:
  description:
    - Ports of O(bridge) that are not container ports (a physical NIC, bond, dummy, tap, or a
      veth whose peer is in the bridge's own namespace) and were not named in O(interfaces),
      so they carry no filter. Each is also reported as a warning.
  returned: when state is present
  type: list
  elements: str
  sample: ["eno1"]
maps_migrated:
  description: Entries copied per map whose size changed.
  returned: when a map was resized
  type: dict
pin_path:
  description: The pin directory.
  returned: always
  type: str
  sample: /sys/fs/bpf/microseg
bpffs_mounted:
  description: Whether the run mounted bpffs at C(/sys/fs/bpf) (it was not mounted).
  returned: when state is present and the run changed the host
  type: bool
  sample: false
unpinned:
  description: The pins removed under O(pin_path), by name (the directory goes too when nothing else is left in it).
  returned: when state is absent and the pin directory existed
  type: list
  elements: str
  sample: ["config_map", "microseg_from_container", "session_map"]
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _privilege
from ansible_collections.ebpf.microseg.plugins.module_utils import _program
from ansible_collections.ebpf.microseg.plugins.module_utils import _program_options
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state

try:
    import bcc  # noqa: F401  pylint: disable=unused-import
    HAS_BCC = True
    BCC_IMPORT_ERROR = None
except ImportError:
    HAS_BCC = False
    BCC_IMPORT_ERROR = traceback.format_exc()


def argument_spec():
    # Map sizes and tuning: type, default and choices from the option table.
    spec = _program_options.argument_spec()
    spec.update(
        interfaces=dict(type="list", elements="str", default=[]),
        bridge=dict(type="str"),
        hooks=dict(type="list", elements="str", choices=["ingress", "egress"],
                   default=["ingress", "egress"]),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        pin_path=dict(type="path", default="/sys/fs/bpf/microseg"),
        state_dir=dict(type="path", default=_saved_state.DEFAULT_STATE_DIR,
                       fallback=(env_fallback, [_saved_state.STATE_DIR_ENV])),
        endpoints=dict(type="dict", default={}),
        learn_endpoints=dict(type="bool", default=False),
        bpf_source=dict(type="dict"),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    _privilege.require_root(module, "microseg_program",
                            "it loads, pins and attaches BPF programs (pins under %s)"
                            % params["pin_path"])
    if not _netlink.HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"),
                         exception=str(_netlink.PYROUTE2_IMPORT_ERROR))
    if params["state"] == "present":
        if not HAS_BCC:
            module.fail_json(msg=missing_required_lib("bcc (python3-bpfcc or python3-bcc)"),
                             exception=BCC_IMPORT_ERROR)
        if not params["interfaces"] and not params["bridge"]:
            module.fail_json(msg="state=present needs interfaces or bridge")
        if not params["bpf_source"]:
            module.fail_json(msg="bpf_source is missing: run this module through its action "
                                 "plugin (ebpf.microseg.microseg_program), not directly")

    try:
        sizes = _program.validate(params)
    except _program.ProgramError as exc:
        module.fail_json(msg=str(exc))
    sources = params["bpf_source"] or {}

    ipr = _netlink.open_route()
    try:
        try:
            current = _program.gather(params, ipr)
            program_plan = _program.plan(params, sources, current, sizes)
            record_actions = _program.plan_saved_state(params, sources)
        except (_netlink.NetlinkError, _program.ProgramError, _loader.LoaderError,
                _saved_state.SavedStateError) as exc:
            module.fail_json(msg=str(exc))
        actions = program_plan.actions + record_actions
        if params["state_dir"]:
            # The boot restore's record: current / outdated / missing (absent: present / missing)
            recorded = _saved_state.has_saved(params["state_dir"], params["pin_path"])
            if params["state"] == "present":
                program_plan.diff.add("saved_state", "outdated" if record_actions and recorded
                                      else ("missing" if record_actions else "current"),
                                      "current")
            else:
                program_plan.diff.add("saved_state", "present" if recorded else "missing",
                                      "missing")
        changed = bool(actions)
        output = dict(changed=changed, actions=actions, pin_path=params["pin_path"],
                      compiled=False)
        if params["state"] == "present":
            output["skipped_interfaces"] = program_plan.skipped_interfaces
            for name in output["skipped_interfaces"]:
                module.warn("%s is a port of bridge %s but not a container's (not a veth with "
                            "its peer in another network namespace): not filtered; name it "
                            "in interfaces to filter it anyway" % (name, params["bridge"]))
        if program_plan.cache_key:
            output["cache_key"] = program_plan.cache_key
        if module._diff:
            output["diff"] = program_plan.diff.diff()
        if changed and not module.check_mode:
            if program_plan.actions:
                try:
                    report = _program.apply(params, sources, current, program_plan, sizes,
                                            _kernel_headers.find_kernel_headers, ipr)
                except (_loader.LoaderError, _netlink.NetlinkError, _program.ProgramError,
                        OSError) as exc:
                    module.fail_json(msg="microseg_program: %s (the previous program, if any, "
                                         "is still attached)" % exc, actions=actions)
                output.update(report)
            # Only what the kernel now holds is recorded: never a program that failed to load.
            try:
                _program.apply_saved_state(params, sources, record_actions)
            except (OSError, IOError) as exc:
                module.fail_json(msg="microseg_program: the program is in place, but its record "
                                     "for the boot restore could not be written: %s" % exc,
                                 actions=actions)
        if module.check_mode and changed:
            output["interfaces"] = dict((name, dict((hook, {}) for hook in hooks))
                                        for name, hooks in program_plan.after["interfaces"].items())
            output["programs"] = {}
        else:
            output["interfaces"], output["programs"] = _program.describe(params, ipr)
    finally:
        ipr.close()
    module.exit_json(**output)


if __name__ == "__main__":
    main()

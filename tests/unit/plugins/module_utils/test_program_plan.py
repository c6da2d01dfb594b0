# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_program's plan, the interface selection, drift and the converge's capacity check,
without root: the gathered state is a fake at the boundary (links as _netlink.list_links
returns them, filters as hook_filters does, the loader's record), and the plan must say what
a real run would do."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _program
from ansible_collections.ebpf.microseg.tests.harness.module_params import program_defaults

PIN = "/nonexistent/microseg-unit"       # never a directory: plan reads nothing under it
SOURCES = {"microseg.bpf.c": "int x;", "microseg.h": "#define Y 1"}


def link(index, name, kind=None, master=None, peer=None):
    return {"index": index, "name": name, "kind": kind, "master": master, "up": True,
            "peer_netnsid": peer}


# A bridge with two container veths, an uplink that is a plain veth in this namespace, a NIC.
LINKS = [link(1, "lo"), link(2, "eth0"), link(10, "br0", kind="bridge"),
         link(11, "vethweb", kind="veth", master=10, peer=1),
         link(12, "vethdb", kind="veth", master=10, peer=2),
         link(13, "uplink", kind="veth", master=10)]


def params(**extra):
    out = program_defaults()
    out.update(pin_path=PIN, bridge="br0", bpf_source=SOURCES)
    out.update(extra)
    return out


def ours(prog_id):
    return {"ours": True, "held_by": None, "prog_id": prog_id}


def installed(p, attached=None, meta=None, config=True):
    """The state a converged host gathers: programs pinned, filters on every selected hook."""
    sizes = _program.validate(p)
    key = _loader.cache_key(SOURCES, PIN, sizes)
    if attached is None:
        attached = dict((name, {"ingress": ours(101), "egress": ours(102)})
                        for name in ("vethweb", "vethdb"))
    current = {
        "pin_path": PIN, "links": LINKS, "_ipr": None,
        "meta": dict({"cache_key": key, "sizes": sizes, "clsact_added": sorted(attached)},
                     **(meta or {})),
        "programs": {"microseg_from_container": {"id": 101}, "microseg_to_container": {"id": 102}},
        "config": None, "endpoints": {}, "attached": attached, "held": {},
    }
    if config:
        current["config"] = FakeConfig(_program.desired_config_fields(p, sizes))
    return current, sizes


class FakeConfig:
    def __init__(self, fields):
        self.__dict__.update(fields)


def kinds(actions):
    return [a["action"] for a in actions]


def test_bridge_selects_container_ports_only():
    assert _netlink.select_interfaces(LINKS, [], "br0") == ["vethdb", "vethweb"]
    assert _netlink.select_interfaces(LINKS, ["uplink"], "br0") == ["uplink", "vethdb", "vethweb"]
    assert _netlink.select_interfaces(LINKS, ["veth*"], None) == ["vethdb", "vethweb"]
    assert _netlink.select_interfaces(LINKS, ["lo", "br0"], None) == []


@pytest.mark.parametrize("patterns,bridge,message", [
    (["vethgone"], None, "interfaces: vethgone does not exist"),
    ([], "brgone", "bridge: brgone does not exist"),
    ([], "eth0", "bridge: eth0 is a plain link, not a bridge"),
])
def test_selection_names_what_is_missing(patterns, bridge, message):
    with pytest.raises(_netlink.NetlinkError) as raised:
        _netlink.select_interfaces(LINKS, patterns, bridge)
    assert str(raised.value) == message
    # The boot restore leaves out what the runtime has not made yet.
    if "does not exist" in message:
        assert _netlink.select_interfaces(LINKS, patterns, bridge, missing_ok=True) == []


def planned(p, sources, current, sizes, **kwargs):
    """The plan's actions and its before/after, as the module returns them, and the plan."""
    program_plan = _program.plan(p, sources, current, sizes, **kwargs)
    return program_plan.actions, program_plan.before, program_plan.after, program_plan


def test_a_fresh_host_compiles_adds_clsact_attaches_and_writes_config():
    p = params()
    sizes = _program.validate(p)
    current = {"pin_path": PIN, "links": LINKS, "_ipr": None, "meta": None, "programs": {},
               "config": None, "endpoints": {}, "attached": {}, "held": {}}
    actions, before, after, result = planned(p, SOURCES, current, sizes)
    assert actions[0] == {"action": "compile", "reason": "no pinned program"}
    assert [(a["action"], a.get("interface"), a.get("hook")) for a in actions[1:]] == [
        ("add_clsact", "vethdb", None), ("attach", "vethdb", "egress"),
        ("attach", "vethdb", "ingress"),
        ("add_clsact", "vethweb", None), ("attach", "vethweb", "egress"),
        ("attach", "vethweb", "ingress"),
        ("write_config", None, None)]
    assert result.skipped_interfaces == ["uplink"]
    assert before["interfaces"] == {} and before["cache_key"] is None
    assert after["interfaces"] == {"vethdb": ["egress", "ingress"],
                                   "vethweb": ["egress", "ingress"]}
    assert after["sizes"] == sizes


def test_a_converged_host_plans_nothing():
    p = params()
    current, sizes = installed(p)
    actions, before, after, _result = planned(p, SOURCES, current, sizes)
    assert actions == []
    assert before == after


def test_a_new_source_replaces_every_filter_in_place():
    p = params()
    current, sizes = installed(p)
    newer = dict(SOURCES, **{"microseg.bpf.c": "int x; /* newer */"})
    actions, _before, after, _result = planned(p, newer, current, sizes)
    assert kinds(actions) == ["compile"] + ["replace"] * 4
    assert actions[0]["reason"] == "source or parameters changed"
    assert sorted((a["interface"], a["hook"]) for a in actions[1:]) == [
        ("vethdb", "egress"), ("vethdb", "ingress"), ("vethweb", "egress"),
        ("vethweb", "ingress")]
    assert after["cache_key"] != current["meta"]["cache_key"]


def test_a_config_change_alone_writes_config_only():
    p = params()
    current, sizes = installed(p)
    changed = dict(p, syn_flood_threshold=4321)
    actions, before, after, _result = planned(changed, SOURCES, current, sizes)
    assert actions == [{"action": "write_config"}]
    assert before["config"]["syn_flood_threshold"] == 10000
    assert after["config"]["syn_flood_threshold"] == 4321


def test_a_port_that_left_the_selection_is_detached():
    p = params(bridge=None, interfaces=["vethweb"])
    current, sizes = installed(p)
    actions, _before, after, _result = planned(p, SOURCES, current, sizes)
    assert actions == [{"action": "detach", "interface": "vethdb", "hook": "egress"},
                       {"action": "detach", "interface": "vethdb", "hook": "ingress"}]
    assert list(after["interfaces"]) == ["vethweb"]


def test_a_hook_another_instance_holds_is_refused_by_name():
    p = params()
    current, sizes = installed(p)
    current["held"] = {"vethdb": {"ingress": "/sys/fs/bpf/tenant-b"}}
    with pytest.raises(_program.ProgramError) as raised:
        _program.plan(p, SOURCES, current, sizes)
    assert "vethdb ingress hook is held by the microseg instance pinned at " \
           "/sys/fs/bpf/tenant-b" in str(raised.value)


def test_absent_detaches_our_hooks_and_removes_the_clsact_we_added():
    p = params(state="absent")
    current, sizes = installed(params())
    current["meta"]["clsact_added"] = ["vethweb"]
    actions, before, after, _result = planned(p, SOURCES, current, sizes)
    assert actions == [
        {"action": "detach", "interface": "vethdb", "hook": "egress"},
        {"action": "detach", "interface": "vethdb", "hook": "ingress"},
        {"action": "detach", "interface": "vethweb", "hook": "egress"},
        {"action": "detach", "interface": "vethweb", "hook": "ingress"},
        {"action": "remove_clsact", "interface": "vethweb"}]
    assert after == {"interfaces": {}, "pinned": False}
    assert before["pinned"] is False      # PIN is not a directory here


def test_endpoints_for_a_missing_interface_are_refused_unless_missing_ok():
    p = params(endpoints={"vethgone": "198.18.9.9"})
    current, sizes = installed(params())
    with pytest.raises(_program.ProgramError) as raised:
        _program.plan(p, SOURCES, current, sizes)
    assert str(raised.value) == "endpoints: interface vethgone does not exist"
    actions, _b, _a, result = planned(p, SOURCES, current, sizes, missing_ok=True)
    assert result.want_endpoints == {}
    assert "write_endpoints" not in kinds(actions)


def test_drift_is_what_the_selection_wants_and_a_hook_lacks():
    meta = {"interfaces": {"vethweb": ["egress", "ingress"], "vethgone": ["egress"]},
            "selection": {"bridge": "br0", "interfaces": [], "hooks": ["egress", "ingress"]}}
    full = {"ingress": {}, "egress": {}}
    # vethdb joined the bridge after the run and carries nothing; vethweb lost a hook;
    # vethgone no longer exists; the uplink is not a container port.
    assert _facts.drift(meta, LINKS, {"vethweb": {"egress": {}}}) == ["vethdb", "vethweb"]
    assert _facts.drift(meta, LINKS, {"vethweb": full, "vethdb": full}) == []
    # A selection whose bridge went away still checks what the run attached.
    gone = dict(meta, selection={"bridge": "brgone", "hooks": ["egress"]})
    assert _facts.drift(gone, LINKS, {}) == ["vethweb"]


def test_both_policy_sets_must_fit_during_the_switch():
    class Compiled:
        packed = dict((name, [None] * 6 if name == "policy_map" else [])
                      for name in _converge.POLICY_MAPS)

    current = {"active_set": 1,
               "counts": {0: dict((n, 0) for n in _converge.POLICY_MAPS),
                          1: dict((n, 5 if n == "policy_map" else 0)
                                  for n in _converge.POLICY_MAPS)},
               "max_entries": dict((n, 10) for n in _converge.POLICY_MAPS)}
    problems = _converge.capacity_problems(current, Compiled())
    assert problems == ["policy_map: the new policy needs 6 entries and the active one holds 5; "
                        "both must fit during the switch but max_entries is 10 (raise the size "
                        "in microseg_program)"]
    current["max_entries"]["policy_map"] = 11
    assert _converge.capacity_problems(current, Compiled()) == []


def test_the_plan_carries_what_apply_writes():
    p = params(endpoints={"vethweb": "198.18.1.10"})
    current, sizes = installed(params())
    _actions, _before, after, program_plan = planned(p, SOURCES, current, sizes)
    assert program_plan.want_endpoints == {11: "198.18.1.10"}
    assert after["endpoints"] == {"vethweb": "198.18.1.10"}
    assert program_plan.want_config == _program.desired_config_fields(p, sizes)
    # Endpoints turn anti-spoofing on: the config's flags change with them.
    assert program_plan.diff.differing() == ["endpoints", "config"]
    assert kinds(program_plan.actions) == ["write_endpoints", "write_config"]

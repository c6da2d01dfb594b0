# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_explain ad hoc against a real pinned program and a converged policy: the model's
answer, the kernel maps' answer (the program's own lookups in the pinned maps) and real
traffic agree; an entry corrupted in the kernel map on purpose is reported."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import policy_id_for
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import (
    run_adhoc, run_playbook)
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab

SIZES = {"policy_map_size": 4096, "range_map_size": 4096, "session_map_size": 16384}
DENY_ALL = {"egress": "deny", "ingress": "deny"}


def policy(lab):
    web, db, other = lab["web"].address, lab["db"].address, lab["other"].address
    segments = {"db": [db + "/32"], "lab": [web.rsplit(".", 1)[0] + ".0/24"]}
    rules = [
        {"name": "lab-to-db", "direction": "both", "src": ["lab"], "dst": ["db"],
         "protocol": "tcp", "dst_ports": [5432], "action": "allow"},
        {"name": "quarantine-out", "direction": "egress", "src": other + "/32",
         "action": "deny"},
        {"name": "quarantine-in", "direction": "ingress", "dst": other + "/32",
         "action": "deny"},
        {"name": "lab-dns", "direction": "both", "src": ["lab"], "dst": ["db"],
         "protocol": "udp", "dst_ports": [53], "action": "log"},
    ]
    return rules, segments


@pytest.fixture(scope="module")
def host():
    """web, db, other on one bridge, the program attached, the policy converged."""
    lab = Lab(subnet="198.18.106", names=("web", "db", "other"))
    pin = new_pin_path("explain")
    try:
        task = {"ebpf.microseg.microseg_program": dict(SIZES, bridge=lab.bridge, pin_path=pin)}
        res = run_playbook([task])
        assert res.rc == 0, res.stdout
        lab.wait_links()
        lab["db"].serve("tcp", 5432)
        lab["other"].serve("tcp", 80)
        rules, segments = policy(lab)
        res = run_playbook([{"ebpf.microseg.microseg_policy": {
            "pin_path": pin, "rules": rules, "segments": segments, "default_action": DENY_ALL,
            "state": "overridden"}}])
        assert res.rc == 0 and res.task()["changed"] is True, res.stdout
        yield lab, pin
    finally:
        lab.destroy(pin_path=pin)


def flows(lab):
    web, db, other = lab["web"].address, lab["db"].address, lab["other"].address
    return [
        {"src": other, "dst": db, "protocol": "tcp", "dst_port": 5432},
        {"src": web, "dst": other, "protocol": "tcp", "dst_port": 80},
        {"src": web, "dst": db, "protocol": "udp", "dst_port": 53, "src_port": 40000},
        {"src": web, "dst": db, "protocol": "icmp", "direction": "egress"},
    ]


def explain(pin, flow_list, check=False):
    res = run_adhoc("ebpf.microseg.microseg_explain",
                    json.dumps({"pin_path": pin, "flows": flow_list}), check=check)
    return res, res.task()


def decided(entry, direction):
    answer = entry[direction]
    return answer["verdict"], answer["decided_by"], answer["kernel"]["verdict"], \
        answer["kernel"]["decided_by"], answer["agree"]


def test_explain_ad_hoc_gives_the_model_and_the_kernel_and_they_agree(host):
    lab, pin = host
    res, out = explain(pin, flows(lab))
    assert res.rc == 0, res.stdout
    assert out["changed"] is False and out["agree"] is True and out["disagreements"] == []
    assert out["rules"] == 4 and out["default_action"] == DENY_ALL
    quarantined, to_other, dns, ping = out["flows"]
    # The quarantine deny names other's /32 on the container's side; lab-to-db names db's
    # /32 on the remote side, compared first: the allow decides (what the model says today).
    assert decided(quarantined, "egress") == ("allow", "lab-to-db", "allow", "lab-to-db", True)
    assert [r["name"] for r in quarantined["egress"]["matching_rules"]] == \
        ["lab-to-db", "quarantine-out"]
    assert quarantined["egress"]["matching_rules"][1]["differs_on"] == "remote_prefix"
    assert decided(quarantined, "ingress") == ("allow", "lab-to-db", "allow", "lab-to-db", True)
    assert quarantined["verdict"] == "allow"
    assert decided(to_other, "egress") == ("deny", "default", "deny", "default", True)
    assert decided(to_other, "ingress") == ("deny", "quarantine-in", "deny", "quarantine-in",
                                            True)
    assert decided(dns, "egress") == ("log", "lab-dns", "log", "lab-dns", True)
    assert dns["verdict"] == "log"
    assert set(ping) >= set(["egress"]) and "ingress" not in ping
    assert decided(ping, "egress") == ("deny", "default", "deny", "default", True)
    assert ping["egress"]["kernel"]["lookups"][0].startswith("policy_map: exact ")
    # And the traffic does what the explanation says.
    assert lab["other"].probe("tcp", lab["db"].address, 5432) == "ok"
    assert lab["web"].probe("tcp", lab["other"].address, 80, 0.5) == "fail"


def test_check_mode_gives_the_same_answer(host):
    lab, pin = host
    _res, real = explain(pin, flows(lab)[:2])
    _res, check = explain(pin, flows(lab)[:2], check=True)
    assert check["flows"] == real["flows"] and check["changed"] is False


def _flip(pin, map_name, policy_id, action):
    """Set the action of every final entry of policy_id in the active set of map_name;
    returns the (key, old value) pairs changed."""
    changed = []
    with _maps.PinnedMaps(pin, names=[map_name, "config_map"]) as pinned:
        active = pinned.config().policy_epoch & 1
        for key, value in list(pinned.items(map_name)):
            if _converge.entry_set(map_name, key.pack()) != active:
                continue
            final = map_name == "policy_map" or value.flags & _abi.RANGE_FLAG_FINAL
            if final and value.policy_id == policy_id:
                changed.append((key, _maps.MAP_SPEC[map_name].value.unpack(value.pack())))
                value.action = _abi.ACTIONS[action]
                pinned.update(map_name, key, value)
    return changed


def _restore(pin, map_name, pairs):
    with _maps.PinnedMaps(pin, names=[map_name]) as pinned:
        for key, value in pairs:
            pinned.update(map_name, key, value)


def test_a_corrupted_kernel_entry_is_a_reported_disagreement(host):
    lab, pin = host
    flow = flows(lab)[0]
    _res, before = explain(pin, [flow])
    where = before["flows"][0]["egress"]["kernel"]["decided_at"]
    assert where in _converge.POLICY_MAPS
    flipped = _flip(pin, where, policy_id_for("lab-to-db"), "deny")
    assert flipped
    try:
        res, out = explain(pin, [flow])
        assert res.rc == 0, res.stdout
        assert out["agree"] is False
        egress = out["flows"][0]["egress"]
        assert (egress["verdict"], egress["kernel"]["verdict"]) == ("allow", "deny")
        assert egress["agree"] is False and egress["kernel"]["decided_by"] == "lab-to-db"
        first = out["disagreements"][0]
        assert (first["flow"], first["direction"]) == (0, "egress")
        assert first["model"] == {"verdict": "allow", "decided_by": "lab-to-db"}
        assert first["kernel"]["verdict"] == "deny"
        assert any("the kernel's maps say deny by 'lab-to-db'" in w
                   for w in out.get("warnings", [])), out.get("warnings")
        # The data plane really decides with the corrupted entry.
        assert lab["other"].probe("tcp", lab["db"].address, 5432, 0.5) == "fail"
    finally:
        _restore(pin, where, flipped)
    _res, after = explain(pin, [flow])
    assert after["agree"] is True


def test_bad_input_names_the_flow_and_the_field(host):
    lab, pin = host
    bad = dict(flows(lab)[0], dst_port=70000)
    res, out = explain(pin, [flows(lab)[1], bad])
    assert out["failed"] is True
    assert out["msg"] == "flows[1].dst_port 70000: port 70000 is out of range 0-65535 " \
        "(nothing was read)"
    assert out["errors"] == ["flows[1].dst_port 70000: port 70000 is out of range 0-65535"]


def test_no_program_at_the_pin_path_says_what_to_run():
    pin = new_pin_path("explain_none")      # never created
    res, out = explain(pin, [{"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": "tcp",
                              "dst_port": 5432}])
    assert out["failed"] is True
    assert out["msg"] == "no microseg program under %s: run ebpf.microseg.microseg_program " \
        "first" % pin


def test_the_action_group_sets_its_pin_path(host):
    lab, pin = host
    block = {"module_defaults": {"group/ebpf.microseg.microseg": {"pin_path": pin}},
             "block": [{"ebpf.microseg.microseg_explain": {"flows": flows(lab)[1:2]}}]}
    ran = run_playbook([block])
    assert ran.rc == 0, ran.stdout
    assert ran.task()["flows"][0]["ingress"]["decided_by"] == "quarantine-in"

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The two-set converge (_converge.py) without root: the pinned maps are a fake at the
PinnedMaps boundary holding packed bytes as the kernel would, the policies are compiled
for real, and each test walks the steps microseg_policy takes (gather, compare, write the
inactive set, switch, clear the old one)."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model

DB = {"name": "web-to-db", "direction": "egress", "src": "198.18.1.0/24",
      "dst": "198.18.2.10/32", "protocol": "tcp", "dst_ports": [5432], "action": "allow"}
SSH = {"name": "ssh-in", "direction": "ingress", "src": "198.18.9.0/24", "protocol": "tcp",
       "dst_ports": [22], "action": "allow"}
EXACT = {"name": "one-flow", "direction": "egress", "src": "198.18.1.7/32",
         "dst": "198.18.2.10/32", "protocol": "udp", "src_ports": [4000], "dst_ports": [53],
         "action": "deny"}
DEFAULTS = {"egress": "deny", "ingress": "deny"}


class FakePinnedMaps:
    """Packed (key, value) bytes per map, and config_map as a mirror."""

    def __init__(self, max_entries=1000):
        self.maps = dict((name, {}) for name in _converge.POLICY_MAPS)
        self.config_value = _maps.MicrosegConfig(syn_flood_threshold=777)
        self.max_entries = max_entries
        self.deleted = []

    def config(self):
        return _maps.MicrosegConfig.unpack(self.config_value.pack())

    def write_config(self, config):
        self.config_value = _maps.MicrosegConfig.unpack(config.pack())

    def raw_items(self, name):
        return list(self.maps[name].items())

    def info(self, name):
        return {"max_entries": self.max_entries}

    def update_packed(self, name, items, flags=0):
        for key, value in items:
            self.maps[name][bytes(key)] = bytes(value)
        return len(items)

    def delete_many(self, name, keys):
        self.deleted.extend((name, key) for key in keys)
        return sum(1 for key in keys if self.maps[name].pop(bytes(key), None) is not None)


@pytest.fixture
def pinned(monkeypatch):
    # The policy source lives in its own pinned map; gather's only other read.
    monkeypatch.setattr(_converge, "read_source", lambda pin_path, policy_set: None)
    return FakePinnedMaps()


def compiled(rules, policy_set):
    policy = _policy_model.normalize(rules, {}, DEFAULTS)
    return _compiler.compile_policy(policy, policy_set)


def converge(pinned, rules):
    """microseg_policy's write path: inactive set, switch, clear the old set."""
    current = _converge.gather(pinned, "/nonexistent")
    new_set = current["active_set"] ^ 1
    new = compiled(rules, new_set)
    assert _converge.capacity_problems(current, new) == []
    changes = _converge.entry_changes(
        dict((name, current["entries"][name][current["active_set"]])
             for name in _converge.POLICY_MAPS), new)
    _converge.clear_set(pinned, current["entries"], new_set)
    _converge.write_set(pinned, new)
    _converge.switch(pinned, current["generation"] + 1, DEFAULTS)
    _converge.clear_set(pinned, current["entries"], current["active_set"])
    return changes, new


def test_a_first_converge_writes_set_one_and_switches_to_it(pinned):
    changes, new = converge(pinned, [DB, SSH, EXACT])
    current = _converge.gather(pinned, "/nonexistent")
    assert (current["generation"], current["active_set"]) == (1, 1)
    assert current["default_action"] == DEFAULTS
    assert current["counts"][0] == dict((name, 0) for name in _converge.POLICY_MAPS)
    assert current["counts"][1] == new.counts()
    assert changes["policy_map"] == {"added": 1, "removed": 0, "changed": 0, "entries": 1}
    # The switch rewrote the epoch and defaults and kept the program's own fields.
    config = pinned.config()
    assert config.syn_flood_threshold == 777
    assert list(config.default_action) == [_abi.MS_ACTION_DENY, _abi.MS_ACTION_DENY]


def test_the_same_policy_in_the_other_set_compares_equal(pinned):
    converge(pinned, [DB, SSH, EXACT])
    changes, _new = converge(pinned, [DB, SSH, EXACT])
    assert all(c["added"] == c["removed"] == c["changed"] == 0 for c in changes.values())
    current = _converge.gather(pinned, "/nonexistent")
    assert (current["generation"], current["active_set"]) == (2, 0)
    assert sum(current["counts"][1].values()) == 0       # the old set was cleared


def test_hit_counters_the_data_plane_moves_are_not_a_change(pinned):
    converge(pinned, [EXACT])
    key, value = next(iter(pinned.maps["policy_map"].items()))
    hits = _maps.PolicyValue.unpack(value)
    hits.hit_count, hits.last_hit = 41, 123456789
    pinned.maps["policy_map"][key] = hits.pack()
    current = _converge.gather(pinned, "/nonexistent")
    changes = _converge.entry_changes(
        dict((name, current["entries"][name][1]) for name in _converge.POLICY_MAPS),
        compiled([EXACT], 0))
    assert changes["policy_map"] == {"added": 0, "removed": 0, "changed": 0, "entries": 1}


def test_a_changed_action_and_a_removed_rule_are_counted_per_map(pinned):
    converge(pinned, [DB, SSH, EXACT])
    changes, _new = converge(pinned, [DB, dict(EXACT, action="allow")])
    assert changes["policy_map"]["changed"] == 1
    assert sum(c["removed"] for c in changes.values()) > 0      # ssh-in's entries
    current = _converge.gather(pinned, "/nonexistent")
    assert current["counts"][current["active_set"]] == compiled(
        [DB, dict(EXACT, action="allow")], current["active_set"]).counts()


def test_every_entry_belongs_to_the_set_it_was_compiled_for(pinned):
    for policy_set in (0, 1):
        for name, pairs in compiled([DB, SSH, EXACT], policy_set).packed.items():
            assert pairs or name != "policy_map"
            assert set(_converge.entry_set(name, key) for key, _value in pairs) <= {policy_set}


def test_a_half_written_inactive_set_is_cleared_before_the_write(pinned):
    converge(pinned, [DB])
    # A run killed mid-write left entries of another policy in the inactive set 0.
    pinned.update_packed("policy_map", compiled([EXACT], 0).packed["policy_map"])
    converge(pinned, [SSH])
    current = _converge.gather(pinned, "/nonexistent")
    assert current["active_set"] == 0
    assert current["counts"][0] == compiled([SSH], 0).counts()
    assert sum(current["counts"][1].values()) == 0

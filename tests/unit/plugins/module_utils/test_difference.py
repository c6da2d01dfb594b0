# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The before/after record both modules build their diff from."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from ansible_collections.ebpf.microseg.plugins.module_utils._difference import DifferenceTracker


def test_facets_keep_their_order_and_say_which_differ():
    tracker = DifferenceTracker()
    tracker.add("interfaces", {}, {"veth0": ["egress"]})
    tracker.add("config", {"a": 1}, {"a": 1})
    assert list(tracker.before) == ["interfaces", "config"]
    assert tracker.differing() == ["interfaces"]
    assert "interfaces" in tracker.differing() and "config" not in tracker.differing()


def test_adding_a_facet_again_replaces_it_in_place():
    tracker = DifferenceTracker()
    tracker.add("rules", [1], [2])
    tracker.add("segments", {}, {})
    tracker.add("rules", [1], [1])
    assert list(tracker.after) == ["rules", "segments"]
    assert tracker.differing() == []
    tracker.set_after("segments", {"db": ["198.18.2.0/24"]})
    assert tracker.before["segments"] == {} and tracker.differing() == ["segments"]


def test_the_diff_is_a_copy():
    tracker = DifferenceTracker()
    rules = [{"name": "web"}]
    tracker.add("rules", rules, rules)
    diff = tracker.diff()
    diff["after"]["rules"].append({"name": "db"})
    assert tracker.after["rules"] == [{"name": "web"}] and "rules" in tracker

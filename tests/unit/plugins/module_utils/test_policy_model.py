# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation: every bad input is refused with the rule and the field in the message."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    PolicyError, normalize, policy_id_for)

SEGMENTS = {"web": ["198.18.1.0/24"], "db": ["198.18.2.10/32", "198.18.2.11/32"]}


def error_of(rules, segments=None, default_action=None):
    with pytest.raises(PolicyError) as info:
        normalize(rules, SEGMENTS if segments is None else segments, default_action)
    return str(info.value)


@pytest.mark.parametrize("rule,field,words", [
    ({"name": "r", "dst": "198.18.300.0/24", "action": "allow"}, "dst", "not an IPv4"),
    ({"name": "r", "dst": "198.18.1.5/24", "action": "allow"}, "dst", "198.18.1.0/24"),
    ({"name": "r", "src": "2001:db8::/32", "action": "allow"}, "src", "IPv6"),
    ({"name": "r", "dst": ["nosuch"], "action": "allow"}, "dst", "unknown segment"),
    ({"name": "r", "protocol": "tcp", "dst_ports": [70000], "action": "allow"}, "dst_ports",
     "out of range"),
    ({"name": "r", "protocol": "tcp", "dst_ports": ["90-80"], "action": "allow"}, "dst_ports",
     "backwards"),
    ({"name": "r", "protocol": "tcp", "src_ports": ["http"], "action": "allow"}, "src_ports",
     "not a port"),
    ({"name": "r", "protocol": "icmp", "dst_ports": [80], "action": "allow"}, "dst_ports",
     "tcp or udp"),
    ({"name": "r", "dst_ports": [80], "action": "allow"}, "dst_ports", "tcp or udp"),
    ({"name": "r", "protocol": "sctp", "action": "allow"}, "protocol", "not tcp"),
    ({"name": "r", "action": "permit"}, "action", "not allow"),
    ({"name": "r", "direction": "sideways", "action": "allow"}, "direction", "not egress"),
    ({"name": "r", "action": "allow", "port": 80}, "port", "unknown field"),
])
def test_each_error_names_rule_and_field(rule, field, words):
    message = error_of([rule])
    assert "rule 'r'" in message and field in message and words in message, message


def test_missing_name():
    assert "name" in error_of([{"action": "allow"}])


def test_duplicate_names():
    message = error_of([{"name": "a", "action": "allow"}, {"name": "a", "action": "deny"}])
    assert "duplicate" in message and "'a'" in message


def test_same_match_with_different_actions_names_both_rules():
    message = error_of([
        {"name": "one", "direction": "both", "dst": ["db"], "action": "allow"},
        {"name": "two", "direction": "egress", "dst": ["198.18.2.10/32", "198.18.2.11/32"],
         "action": "deny"}])
    assert "'two'" in message and "'one'" in message


def test_same_match_same_action_is_fine():
    normalize([{"name": "one", "dst": ["db"], "action": "allow"},
               {"name": "two", "dst": "198.18.2.10/31", "action": "allow"}], SEGMENTS, None)


def test_bad_segment_and_default():
    assert "segments.web" in error_of([], segments={"web": ["nonsense"]})
    assert "default_action.egress" in error_of([], default_action={"egress": "drop"})


def test_canonical_form_is_stable_and_keeps_segment_names():
    policy = normalize([{"name": "w", "src": "web", "dst": ["db"], "protocol": "TCP",
                         "dst_ports": ["8000 - 8080", "5432"], "action": "allow"}], SEGMENTS, None)
    assert policy.to_rules() == [{"name": "w", "direction": "both", "src": ["web"],
                                  "dst": ["db"], "protocol": "tcp",
                                  "dst_ports": ["8000-8080", 5432], "action": "allow"}]
    assert policy.rules[0].policy_id == policy_id_for("w") != 0
    assert policy.rules[0].dst == [(0xc612020a, 31)]   # db merged into one /31

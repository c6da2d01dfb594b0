# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reference model: one example per criterion of DESIGN.md section 3."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import normalize
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import verdict

DENY = {"egress": "deny", "ingress": "deny"}


def decide(rules, direction="egress", src="198.18.1.10", dst="198.18.2.20", proto=6,
           sport=40000, dport=5432, default=None):
    policy = normalize(rules, {"web": ["198.18.1.0/24"]}, default or DENY)
    return verdict(policy, direction, src, dst, proto, sport, dport)[0]


def test_no_candidate_takes_the_default_per_direction():
    assert decide([], default={"egress": "allow", "ingress": "deny"}) == "allow"
    assert decide([], direction="ingress", default={"egress": "allow", "ingress": "deny"}) \
        == "deny"


def test_exact_rule_beats_everything():
    rules = [{"name": "exact", "src": "198.18.1.10/32", "dst": "198.18.2.20/32",
              "protocol": "tcp", "src_ports": [40000], "dst_ports": [5432], "action": "allow"},
             {"name": "host", "dst": "198.18.2.20/32", "protocol": "tcp", "dst_ports": [5432],
              "action": "deny"}]
    assert decide(rules) == "allow"
    assert decide(rules, sport=40001) == "deny"


def test_longer_remote_prefix_beats_longer_local_prefix():
    rules = [{"name": "remote24", "direction": "egress", "dst": "198.18.2.0/24", "action": "deny"},
             {"name": "local32-remote16", "direction": "egress", "src": "198.18.1.10/32",
              "dst": "198.18.0.0/16", "action": "allow"}]
    assert decide(rules, default={"egress": "allow", "ingress": "allow"}) == "deny"


def test_remote_is_the_source_for_ingress():
    rules = [{"name": "from-remote", "direction": "ingress", "src": "198.18.2.0/24",
              "action": "allow"},
             {"name": "to-me", "direction": "ingress", "dst": "198.18.0.0/16", "action": "deny"}]
    assert decide(rules, direction="ingress", src="198.18.2.20", dst="198.18.1.10") == "allow"


def test_local_prefix_breaks_a_remote_tie():
    rules = [{"name": "any-local", "dst": "198.18.2.0/24", "action": "deny"},
             {"name": "web-local", "src": ["web"], "dst": "198.18.2.0/24", "action": "allow"}]
    assert decide(rules) == "allow"


@pytest.mark.parametrize("ports,expected", [
    ([[5432], ["5000-6000"]], "allow"),   # single beats range
    ([["5000-6000"], None], "allow"),     # range beats any
])
def test_port_specificity(ports, expected):
    rules = [{"name": "specific", "protocol": "tcp", "dst_ports": ports[0], "action": "allow"}]
    other = {"name": "general", "protocol": "tcp", "action": "deny"}
    if ports[1]:
        other["dst_ports"] = ports[1]
    rules.append(other)
    assert decide(rules) == expected


def test_specific_protocol_beats_any():
    rules = [{"name": "any", "action": "deny"}, {"name": "tcp", "protocol": "tcp",
                                                 "action": "allow"}]
    assert decide(rules) == "allow"
    assert decide(rules, proto=17) == "deny"


@pytest.mark.parametrize("actions,expected", [
    (("allow", "deny"), "deny"), (("log", "allow"), "log"), (("deny", "log"), "deny")])
def test_tie_goes_deny_log_allow(actions, expected):
    """Different matches (so no conflict), equally specific for this packet."""
    rules = [{"name": "a", "dst": "198.18.2.0/24", "protocol": "tcp", "action": actions[0]},
             {"name": "b", "dst": ["198.18.2.0/24", "198.19.0.0/16"], "protocol": "tcp",
              "action": actions[1]}]
    assert decide(rules) == expected


def test_ports_never_match_portless_packets():
    rules = [{"name": "tcp-any-port", "protocol": "tcp", "action": "allow"},
             {"name": "icmp", "protocol": "icmp", "action": "log"}]
    assert decide(rules, proto=1) == "log"
    assert decide(rules, proto=47) == "deny"

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""The reference model: examples for every criterion of docs/architecture.md section 3, in order."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import normalize
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import (
    candidates, verdict)

DENY = {"egress": "deny", "ingress": "deny"}
ALLOW = {"egress": "allow", "ingress": "allow"}
SEGMENTS = {"web": ["198.18.1.0/24"], "db": ["198.18.2.20/32", "198.18.2.21/32"]}


def decide(rules, direction="egress", src="198.18.1.10", dst="198.18.2.20", proto=6,
           sport=40000, dport=5432, default=None):
    """(action, winning rule name or None for the default)."""
    policy = normalize(rules, SEGMENTS, default or DENY)
    action, policy_id = verdict(policy, direction, src, dst, proto, sport, dport)
    names = [r.name for r in policy.rules if r.policy_id == policy_id]
    return action, (names[0] if names else None)


def rule(name, action, **fields):
    out = {"name": name, "action": action}
    out.update(fields)
    return out


# -- 4. no candidate ---------------------------------------------------------------------------

def test_no_candidate_takes_the_default_of_the_direction_with_policy_id_0():
    default = {"egress": "allow", "ingress": "deny"}
    assert decide([], default=default) == ("allow", None)
    assert decide([], direction="ingress", default=default) == ("deny", None)
    policy = normalize([], {}, default)
    assert verdict(policy, "egress", "1.2.3.4", "5.6.7.8", 6, 1, 2) == ("allow", 0)


def test_default_action_omitted_means_allow():
    policy = normalize([], {}, None)
    assert verdict(policy, "ingress", "1.2.3.4", "5.6.7.8", 17, 1, 2) == ("allow", 0)


# -- 1. candidates -------------------------------------------------------------------------

def test_direction_must_match_and_both_matches_either():
    rules = [rule("out", "allow", direction="egress")]
    assert decide(rules) == ("allow", "out")
    assert decide(rules, direction="ingress") == ("deny", None)
    both = [rule("both", "allow", direction="both", src="198.18.1.0/24")]
    assert decide(both) == ("allow", "both")
    assert decide(both, direction="ingress") == ("allow", "both")    # src is the packet's src
    assert decide(both, direction="ingress", src="198.18.2.20", dst="198.18.1.10") == \
        ("deny", None)


def test_addresses_protocol_and_ports_must_all_match():
    rules = [rule("r", "allow", src="web", dst="db", protocol="tcp", dst_ports=["5000-6000"],
                  src_ports=["40000-40010"])]
    assert decide(rules) == ("allow", "r")
    assert decide(rules, src="198.18.9.1") == ("deny", None)
    assert decide(rules, dst="198.18.2.22") == ("deny", None)
    assert decide(rules, proto=17) == ("deny", None)
    assert decide(rules, dport=6001) == ("deny", None)
    assert decide(rules, sport=40011) == ("deny", None)


def test_portless_packets_never_meet_rules_with_ports():
    rules = [rule("tcp-any-port", "allow", protocol="tcp"),
             rule("tcp-80", "allow", protocol="tcp", dst_ports=["0-65535"]),
             rule("icmp", "log", protocol="icmp")]
    assert decide(rules, proto=1, sport=0, dport=0) == ("log", "icmp")
    assert decide(rules, proto=47, sport=0, dport=0) == ("deny", None)
    # ports given for a portless protocol are ignored, as the kernel does not parse them
    assert decide(rules, proto=1, sport=5, dport=7) == ("log", "icmp")


def test_protocol_numbers_and_names_are_the_same():
    rules = [rule("gre", "allow", protocol=47), rule("udp", "log", protocol="17")]
    assert decide(rules, proto=47) == ("allow", "gre")
    assert decide(rules, proto=17) == ("log", "udp")
    policy = normalize(rules, {}, DENY)
    assert verdict(policy, "egress", "1.1.1.1", "2.2.2.2", "udp", 1, 2) == \
        ("log", policy.by_name["udp"].policy_id)


# -- 2a. exact 5-tuple ---------------------------------------------------------------------------

EXACT = rule("exact", "allow", direction="egress", src="198.18.1.10/32",
             dst="198.18.2.20/32", protocol="tcp", src_ports=[40000], dst_ports=[5432])


def test_exact_rule_beats_everything_but_only_on_its_tuple():
    rules = [EXACT,
             rule("host", "deny", direction="egress", src="198.18.1.10/32",
                  dst="198.18.2.20/32", protocol="tcp", src_ports=["40000-40001"],
                  dst_ports=[5432])]
    assert decide(rules) == ("allow", "exact")
    assert decide(rules, sport=40001) == ("deny", "host")
    assert decide(rules, direction="ingress") == ("deny", None)


def test_exact_needs_every_field_single():
    policy = normalize([EXACT, rule("two-hosts", "deny", src="198.18.1.10/31",
                                    dst="198.18.2.20/32", protocol="tcp",
                                    src_ports=[40000], dst_ports=[5432]),
                        rule("udp-exact", "deny", src="198.18.1.10", dst="198.18.2.20",
                             protocol="udp", src_ports=[1], dst_ports=[2])], {}, DENY)
    assert [r.exact for r in policy.rules] == [True, False, True]


# -- 2b. remote prefix ------------------------------------------------------------------------

def test_longer_remote_prefix_beats_longer_local_prefix_and_ports():
    rules = [rule("remote24", "deny", direction="egress", dst="198.18.2.0/24"),
             rule("local32-remote16", "allow", direction="egress", src="198.18.1.10/32",
                  dst="198.18.0.0/16", protocol="tcp", dst_ports=[5432])]
    assert decide(rules, default=ALLOW) == ("deny", "remote24")


def test_remote_is_the_source_for_ingress():
    rules = [rule("from-remote", "allow", direction="ingress", src="198.18.2.0/24"),
             rule("to-me", "deny", direction="ingress", dst="198.18.1.10/32")]
    assert decide(rules, direction="ingress", src="198.18.2.20", dst="198.18.1.10") == \
        ("allow", "from-remote")
    assert decide(rules, direction="ingress", src="198.18.3.1", dst="198.18.1.10") == \
        ("deny", "to-me")


def test_the_remote_prefix_is_the_one_of_the_rule_holding_the_address():
    rules = [rule("two", "allow", direction="egress",
                  dst=["198.18.2.20/32", "198.19.0.0/16"]),
             rule("mid", "deny", direction="egress", dst="198.18.2.0/24")]
    assert decide(rules) == ("allow", "two")                           # its /32
    assert decide(rules, dst="198.18.2.30") == ("deny", "mid")
    assert decide(rules, dst="198.19.2.30", default=ALLOW) == ("allow", "two")   # its /16


def test_a_prefix_nested_in_another_of_the_same_rule_is_merged_away():
    rules = [rule("mixed", "allow", direction="egress",
                  dst=["198.18.0.0/16", "198.18.2.20/32"]),
             rule("mid", "deny", direction="egress", dst="198.18.2.0/24")]
    assert decide(rules) == ("deny", "mid")      # mixed is just 198.18.0.0/16


def test_specificity_is_judged_on_merged_sets():
    """db is two adjacent hosts: one /31 after merging, less specific than a /32."""
    rules = [rule("db", "allow", direction="egress", dst="db"),
             rule("host", "deny", direction="egress", dst="198.18.2.20/32")]
    assert decide(rules) == ("deny", "host")
    assert decide(rules, dst="198.18.2.21") == ("allow", "db")


# -- 2c. local prefix -----------------------------------------------------------------------

def test_local_prefix_breaks_a_remote_tie():
    rules = [rule("any-local", "deny", dst="198.18.2.0/24"),
             rule("web-local", "allow", src="web", dst="198.18.2.0/24")]
    assert decide(rules) == ("allow", "web-local")
    rules = [rule("l24", "deny", direction="ingress", src="198.18.2.0/24", dst="web"),
             rule("l32", "log", direction="ingress", src="198.18.2.0/24",
                  dst="198.18.1.10/32")]
    assert decide(rules, direction="ingress", src="198.18.2.20", dst="198.18.1.10") == \
        ("log", "l32")


def test_local_prefix_beats_ports():
    rules = [rule("local", "deny", src="198.18.1.10/32", dst="198.18.2.0/24"),
             rule("ports", "allow", src="198.18.1.0/24", dst="198.18.2.0/24", protocol="tcp",
                  dst_ports=[5432], src_ports=[40000])]
    assert decide(rules) == ("deny", "local")


# -- 2d. ports --------------------------------------------------------------------------------

@pytest.mark.parametrize("specific,general", [
    ([5432], ["5000-6000"]),   # single beats range
    (["5000-6000"], None),     # range beats any
    ([5432], None),            # single beats any
    (["5432-5432"], ["5432-5433"]),   # a one-port range is a single port
])
def test_destination_port_specificity(specific, general):
    rules = [rule("specific", "allow", protocol="tcp", dst_ports=specific)]
    other = rule("general", "deny", protocol="tcp")
    if general:
        other["dst_ports"] = general
    rules.append(other)
    assert decide(rules) == ("allow", "specific")


def test_a_port_listed_alone_is_single_even_inside_a_range_of_the_same_rule():
    rules = [rule("mixed", "allow", protocol="tcp", dst_ports=["5000-6000", 5432]),
             rule("single", "deny", protocol="tcp", dst_ports=[5432], src_ports=["1-65535"])]
    # equal on the destination port (both single); the source range of "single" decides
    assert decide(rules) == ("deny", "single")
    assert decide(rules, dport=5433) == ("allow", "mixed")


def test_destination_port_before_source_port():
    rules = [rule("dst-single", "allow", protocol="tcp", dst_ports=[5432]),
             rule("src-single", "deny", protocol="tcp", dst_ports=["5000-6000"],
                  src_ports=[40000])]
    assert decide(rules) == ("allow", "dst-single")
    assert decide(rules, dport=5433) == ("deny", "src-single")


def test_source_port_specificity():
    rules = [rule("eph", "allow", protocol="tcp", src_ports=["1024-65535"]),
             rule("one", "log", protocol="tcp", src_ports=[40000]),
             rule("any", "deny", protocol="tcp")]
    assert decide(rules) == ("log", "one")
    assert decide(rules, sport=40001) == ("allow", "eph")
    assert decide(rules, sport=22) == ("deny", "any")


# -- 2e. protocol -----------------------------------------------------------------------------

def test_specific_protocol_beats_any():
    rules = [rule("any", "deny"), rule("tcp", "allow", protocol="tcp")]
    assert decide(rules) == ("allow", "tcp")
    assert decide(rules, proto=17) == ("deny", "any")


def test_ports_outrank_protocol():
    """A tcp rule with a port range beats a tcp rule without ports, which beats any."""
    rules = [rule("any", "log"), rule("tcp", "deny", protocol="tcp"),
             rule("range", "allow", protocol="tcp", dst_ports=["1-65535"])]
    assert decide(rules) == ("allow", "range")
    assert decide(rules, dport=0) == ("deny", "tcp")


# -- 3. ties ------------------------------------------------------------------------------------

@pytest.mark.parametrize("actions,expected", [
    (("allow", "deny"), "deny"), (("log", "allow"), "log"), (("deny", "log"), "deny"),
    (("allow", "log"), "log")])
def test_tie_goes_deny_over_log_over_allow(actions, expected):
    """Different matches (so no conflict), equally specific for this packet."""
    rules = [rule("a", actions[0], dst="198.18.2.0/24", protocol="tcp"),
             rule("b", actions[1], dst=["198.18.2.0/24", "198.19.0.0/16"], protocol="tcp")]
    assert decide(rules)[0] == expected
    assert decide(list(reversed(rules)))[0] == expected


def test_full_tie_with_the_same_action_reports_the_first_rule():
    rules = [rule("a", "allow", dst="198.18.2.0/24"),
             rule("b", "allow", dst=["198.18.2.0/24", "198.19.0.0/16"])]
    assert decide(rules) == ("allow", "a")
    assert decide(list(reversed(rules))) == ("allow", "b")


def test_candidates_lists_every_match_best_first():
    policy = normalize([rule("any", "deny"), rule("tcp", "allow", protocol="tcp"),
                        rule("udp", "allow", protocol="udp")], {}, DENY)
    found = candidates(policy, "egress", "198.18.1.10", "198.18.2.20", 6, 1, 2)
    assert [r.name for _rank, r in found] == ["tcp", "any"]

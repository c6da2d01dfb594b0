# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""The compiler against the reference model, through a Python rendition of decide().

simulate() walks the compiled entries exactly as decide() in files/bpf/lib/policy.h does
(exact hash, then the four longest-prefix stages, a miss meaning the default): the walk of
plugins/module_utils/_lookup.py, which microseg_explain runs over the pinned maps. Hypothesis
draws colliding rule sets and boundary packets with the strategies of
tests/harness/policy_strategies.py, which the real-kernel test
tests/functional/test_differential.py shares.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _lookup
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    PolicyError, normalize, parse_cidr)
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import verdict
from ansible_collections.ebpf.microseg.tests.harness.policy_strategies import (
    CIDRS, HOSTS, PACKET_PROTOCOLS, PORT_ITEMS, PROTOCOLS, SEGMENTS, SINGLE_PORTS, build_policy,
    cidr_edges, policy_and_packets, policy_docs)


# -- decide() in Python ---------------------------------------------------------------------

# lookup_policy() over compiled entries: plugins/module_utils/_lookup.py, the walk
# microseg_explain runs over the pinned maps.
Kernel = _lookup.Entries


def simulate(compiled, policy_set, default_action, packet):
    """(action, policy_id) as decide() takes it for the first packet of a flow.

    compiled is a CompiledPolicy or any object with the five map lists (both sets may
    be in them, as in the real maps).
    """
    return Kernel(compiled).decide(policy_set, default_action, packet)


def model(policy, packet):
    return verdict(policy, packet["direction"], packet["src"], packet["dst"],
                   packet["protocol"], packet["src_port"], packet["dst_port"])


class _Union:
    """Both policy sets in the same maps, as a converge leaves them for a moment."""

    def __init__(self, *compiled):
        for name in _compiler.MAP_NAMES:
            setattr(self, name, [pair for c in compiled for pair in getattr(c, name)])


# -- properties -----------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(policy_and_packets(16), st.integers(0, 1))
def test_compiled_lookups_equal_the_model(case, policy_set):
    doc, pkts = case
    policy = build_policy(doc)
    compiled = _compiler.compile_policy(policy, policy_set)
    kernel = Kernel(compiled)
    for pkt in pkts:
        assert kernel.decide(policy_set, policy.default_action, pkt) == \
            model(policy, pkt), (doc, pkt)


@settings(max_examples=100, deadline=None)
@given(policy_and_packets(8), policy_and_packets(8), st.integers(0, 1))
def test_both_sets_coexist_without_interference(case_a, case_b, active):
    policy_a, policy_b = build_policy(case_a[0]), build_policy(case_b[0])
    both = Kernel(_Union(_compiler.compile_policy(policy_a, active),
                         _compiler.compile_policy(policy_b, active ^ 1)))
    for pkt in case_a[1]:
        assert both.decide(active, policy_a.default_action, pkt) == model(policy_a, pkt)
    for pkt in case_b[1]:
        assert both.decide(active ^ 1, policy_b.default_action, pkt) == model(policy_b, pkt)


def _lpm_identity(key):
    """(map-level identity of an LPM key): its prefix length and its first prefixlen bits."""
    data = key.pack()[4:]
    value = int.from_bytes(data, "big")
    return key.prefixlen, value >> (len(data) * 8 - key.prefixlen)


def _structure_problems(compiled, policy_set):
    problems = []
    for name in _compiler.MAP_NAMES:
        pairs = getattr(compiled, name)
        if name == "policy_map":
            keys = [k.pack() for k, _v in pairs]
            if len(set(keys)) != len(keys):
                problems.append("duplicate exact keys")
            if any(k.policy_set != policy_set for k, _v in pairs):
                problems.append("exact key in the wrong set")
            continue
        seen = set()
        for key, value in pairs:
            data = key.pack()[4:]
            width = len(data) * 8
            if not 32 <= key.prefixlen <= width:
                problems.append("%s: prefixlen %d" % (name, key.prefixlen))
            if int.from_bytes(data, "big") & ((1 << (width - key.prefixlen)) - 1):
                problems.append("%s: bits set past the prefix" % name)
            if _lpm_identity(key) in seen:
                problems.append("%s: duplicate key" % name)
            seen.add(_lpm_identity(key))
            if name != "ip_range_map" and (key.class_id >> 31 != policy_set or
                                           key.class_id & 0x7fffffff < 4):
                problems.append("%s: class %#x outside set %d" % (name, key.class_id,
                                                                  policy_set))
            if value.flags & _abi.RANGE_FLAG_FINAL:
                if value.policy_id not in compiled.rule_ids.values():
                    problems.append("%s: unknown policy id" % name)
            elif name == "sport_range_map":
                problems.append("sport stage must end the walk")
    stages = list(_compiler.MAP_NAMES[1:])
    for here, there in zip(stages, stages[1:]):
        wanted = set(v.next_class for _k, v in getattr(compiled, here)
                     if not v.flags & _abi.RANGE_FLAG_FINAL)
        present = set(k.class_id for k, _v in getattr(compiled, there))
        if wanted - present:
            problems.append("%s names classes with no %s entry" % (here, there))
    return problems


@settings(max_examples=200, deadline=None)
@given(policy_docs(1, 12), st.integers(0, 1))
def test_entries_are_well_formed_and_deterministic(doc, policy_set):
    policy = build_policy(doc)
    compiled = _compiler.compile_policy(policy, policy_set)
    assert _structure_problems(compiled, policy_set) == []
    again = _compiler.compile_policy(build_policy(doc), policy_set)
    for name in _compiler.MAP_NAMES:
        assert [(k.pack(), v.pack()) for k, v in getattr(compiled, name)] == \
            [(k.pack(), v.pack()) for k, v in getattr(again, name)]
    assert compiled.counts() == dict((n, len(getattr(compiled, n))) for n in _compiler.MAP_NAMES)


def test_a_large_random_policy_agrees_with_the_model():
    """Hundreds of interacting rules at once, which small examples rarely line up."""
    rng = random.Random(20261125)
    rules_ = []
    for index in range(150):
        proto = rng.choice(PROTOCOLS)
        rule = {"name": "big%d" % index, "direction": rng.choice(["egress", "ingress", "both"]),
                "protocol": proto, "action": rng.choice(["allow", "deny", "log"])}
        for field in ("src", "dst"):
            if rng.random() < 0.7:
                rule[field] = rng.sample(CIDRS + sorted(SEGMENTS), rng.randint(1, 3))
        if proto in ("tcp", "udp"):
            if rng.random() < 0.6:
                rule["dst_ports"] = rng.sample(PORT_ITEMS, rng.randint(1, 3))
            if rng.random() < 0.3:
                rule["src_ports"] = rng.sample(PORT_ITEMS, rng.randint(1, 2))
        rules_.append(rule)
    doc = {"rules": rules_, "segments": SEGMENTS,
           "default_action": {"egress": "deny", "ingress": "allow"}}
    policy = build_policy(doc)
    assert len(policy.rules) > 100
    compiled = _compiler.compile_policy(policy, 1)
    assert _structure_problems(compiled, 1) == []
    kernel = Kernel(compiled)
    for _index in range(3000):
        rule = rng.choice(doc["rules"])
        pkt = {"direction": rng.choice(["egress", "ingress"]),
               "src": rng.choice(cidr_edges(rng.choice(CIDRS)) + HOSTS),
               "dst": rng.choice(cidr_edges(rng.choice(CIDRS)) + HOSTS),
               "protocol": rng.choice(PACKET_PROTOCOLS),
               "src_port": rng.choice(SINGLE_PORTS + [1, 1023, 1024, 40000]),
               "dst_port": rng.choice(SINGLE_PORTS + [444, 5999, 6001, 8081])}
        if rule.get("dst_ports") and rng.random() < 0.5:
            low, _sep, high = str(rng.choice(rule["dst_ports"])).partition("-")
            pkt["dst_port"] = rng.choice([int(low), int(high or low)])
        assert kernel.decide(1, policy.default_action, pkt) == model(policy, pkt), pkt


# -- examples --------------------------------------------------------------------------------

def _compile(rules_, default=None, policy_set=0, segments=None):
    policy = normalize(rules_, segments or {}, default or {"egress": "deny", "ingress": "deny"})
    return policy, _compiler.compile_policy(policy, policy_set)


def _pkt(direction="egress", src="198.18.1.10", dst="198.18.2.20", proto=6, sport=40000,
         dport=5432):
    return {"direction": direction, "src": src, "dst": dst, "protocol": proto,
            "src_port": sport, "dst_port": dport}


def _check(policy, compiled, policy_set, pkt, action, rule_name=None):
    want = (action, policy.by_name[rule_name].policy_id if rule_name else 0)
    assert model(policy, pkt) == want
    assert simulate(compiled, policy_set, policy.default_action, pkt) == want


@pytest.mark.parametrize("low,high", [(0, 65535), (80, 443), (5432, 5432), (1, 65534),
                                      (8000, 8080), (0, 0), (65535, 65535), (1024, 65535)])
def test_blocks_cover_a_range_exactly_with_aligned_blocks(low, high):
    covered = []
    for start, bits in _compiler._blocks(low, high):
        size = 1 << (16 - bits)
        assert start % size == 0 and 0 <= bits <= 16
        covered.extend(range(start, start + size))
    assert covered == list(range(low, high + 1))
    assert len(_compiler._blocks(low, high)) <= 2 * 16


def test_exact_rules_go_to_the_hash_map_only_one_key_per_direction():
    policy, compiled = _compile([
        {"name": "pin", "direction": "both", "src": "198.18.1.5/32", "dst": "198.18.2.10",
         "src_ports": [40000], "dst_ports": ["5432-5432"], "protocol": "tcp",
         "action": "deny"}], policy_set=1)
    assert compiled.counts() == {"policy_map": 2, "ip_range_map": 0, "local_range_map": 0,
                                 "port_range_map": 0, "sport_range_map": 0}
    keys = sorted((k.direction, k.policy_set, k.protocol, k.src_port, k.dst_port,
                   _maps.u32_to_ip(k.src_ip), _maps.u32_to_ip(k.dst_ip))
                  for k, _v in compiled.policy_map)
    assert keys == [(0, 1, 6, 40000, 5432, "198.18.1.5", "198.18.2.10"),
                    (1, 1, 6, 40000, 5432, "198.18.1.5", "198.18.2.10")]
    assert all(v.policy_id == policy.by_name["pin"].policy_id and v.action == 1
               for _k, v in compiled.policy_map)
    assert compiled.rule_ids == {"pin": policy.by_name["pin"].policy_id}


def test_the_same_exact_tuple_twice_keeps_the_first_rule():
    policy, compiled = _compile([
        {"name": "first", "direction": "both", "src": "198.18.1.10/32",
         "dst": "198.18.2.20/32", "protocol": "tcp", "src_ports": [40000],
         "dst_ports": [5432], "action": "allow"},
        {"name": "second", "direction": "egress", "src": "198.18.1.10/32",
         "dst": "198.18.2.20/32", "protocol": "tcp", "src_ports": [40000],
         "dst_ports": [5432], "action": "allow"}])
    assert len(compiled.policy_map) == 2
    _check(policy, compiled, 0, _pkt(), "allow", "first")


def test_exact_rule_beats_a_host_cidr_rule_only_on_its_own_tuple():
    policy, compiled = _compile([
        {"name": "exact", "direction": "egress", "src": "198.18.1.10", "dst": "198.18.2.20",
         "protocol": "tcp", "src_ports": [40000], "dst_ports": [5432], "action": "allow"},
        {"name": "hosts", "direction": "egress", "src": "198.18.1.10", "dst": "198.18.2.20",
         "protocol": "tcp", "src_ports": ["40000-40001"], "dst_ports": [5432],
         "action": "deny"}])
    _check(policy, compiled, 0, _pkt(), "allow", "exact")
    _check(policy, compiled, 0, _pkt(sport=40001), "deny", "hosts")
    _check(policy, compiled, 0, _pkt(proto=17), "deny")


def test_a_protocol_subtree_not_covering_a_port_falls_back_to_any_protocol():
    policy, compiled = _compile([
        {"name": "pg", "dst": "198.18.2.0/24", "protocol": "tcp", "dst_ports": [5432],
         "action": "allow"},
        {"name": "rest", "dst": "198.18.2.0/24", "action": "log"}],
        default={"egress": "allow", "ingress": "allow"})
    _check(policy, compiled, 0, _pkt(), "allow", "pg")
    for port in (0, 5431, 5433, 65535):
        _check(policy, compiled, 0, _pkt(dport=port), "log", "rest")
    _check(policy, compiled, 0, _pkt(proto=17), "log", "rest")
    _check(policy, compiled, 0, _pkt(proto=1, dport=0), "log", "rest")
    # Only the any-protocol entry and the one block differing from it are written.
    assert len(compiled.port_range_map) == 2 * 2   # one class per direction


def test_a_rule_that_wins_whatever_follows_ends_the_walk_at_stage_one():
    policy, compiled = _compile([
        {"name": "quarantine", "direction": "egress", "dst": "198.18.2.20/32",
         "action": "deny"},
        {"name": "web-db", "direction": "egress", "src": "198.18.1.0/24",
         "dst": "198.18.2.0/24", "protocol": "tcp", "dst_ports": [5432], "action": "allow"}])
    finals = [k for k, v in compiled.ip_range_map if v.flags & _abi.RANGE_FLAG_FINAL]
    assert [(k.prefixlen, _maps.u32_to_ip(k.ip)) for k in finals] == [(64, "198.18.2.20")]
    _check(policy, compiled, 0, _pkt(), "deny", "quarantine")
    _check(policy, compiled, 0, _pkt(dst="198.18.2.21"), "allow", "web-db")
    _check(policy, compiled, 0, _pkt(dst="198.18.2.21", dport=80), "deny")


def test_host_rules_cost_a_bounded_number_of_entries():
    rules_ = [{"name": "h%d" % i, "direction": "egress",
               "dst": "198.19.%d.%d/32" % (i >> 8, i & 255), "protocol": "tcp",
               "dst_ports": [443], "action": "allow"} for i in range(2000)]
    _policy, compiled = _compile(rules_)
    counts = compiled.counts()
    assert counts["ip_range_map"] == 2000
    assert counts["local_range_map"] == 2000
    assert counts["port_range_map"] == 2000
    assert counts["sport_range_map"] == 0


def test_classes_are_shared_between_identical_situations():
    """Two remote prefixes with the same candidates lead to one local class."""
    _policy, compiled = _compile([
        {"name": "web", "direction": "egress", "src": "198.18.1.0/24",
         "dst": ["198.18.2.0/24", "198.18.4.0/24"], "action": "allow"}])
    assert len(compiled.ip_range_map) == 2
    assert len(set(v.next_class for _k, v in compiled.ip_range_map)) == 1
    assert len(compiled.local_range_map) == 1


def test_class_ids_carry_the_policy_set():
    for policy_set in (0, 1):
        _policy, compiled = _compile([
            {"name": "a", "src": "198.18.1.0/24", "protocol": "tcp", "dst_ports": [80],
             "src_ports": ["1024-65535"], "action": "allow"},
            {"name": "b", "protocol": "tcp", "src_ports": [22], "action": "deny"}],
            policy_set=policy_set)
        assert set(k.class_id for k, _v in compiled.ip_range_map) == \
            set([policy_set << 1, (policy_set << 1) | 1])
        for name in ("local_range_map", "port_range_map", "sport_range_map"):
            pairs = getattr(compiled, name)
            assert pairs, name
            assert all(k.class_id >> 31 == policy_set and k.class_id & 0x7fffffff >= 4
                       for k, _v in pairs)


def test_policy_set_must_be_0_or_1():
    policy = normalize([], {}, None)
    with pytest.raises(ValueError):
        _compiler.compile_policy(policy, 2)
    assert sum(_compiler.compile_policy(policy, 0).counts().values()) == 0


def test_addresses_are_written_in_network_byte_order():
    _policy, compiled = _compile([{"name": "a", "direction": "egress",
                                   "dst": "198.18.2.0/24", "action": "deny"}])
    (key, _value), = compiled.ip_range_map
    assert key.pack()[8:12] == bytes([198, 18, 2, 0])
    assert key.prefixlen == 32 + 24 and key.class_id == 0
    assert struct.unpack("!I", key.pack()[8:12])[0] == parse_cidr("198.18.2.0/24")[0]


# -- tiers -----------------------------------------------------------------------------------

WEB_TO_DB = {"name": "web-to-db", "direction": "egress", "src": "198.18.1.0/24",
             "dst": "198.18.2.20/32", "protocol": "tcp", "dst_ports": [5432], "action": "allow"}
QUARANTINE = [
    {"name": "quarantine-out", "direction": "egress", "src": "198.18.1.7/32", "action": "deny",
     "tier": "incident"},
    {"name": "quarantine-in", "direction": "ingress", "dst": "198.18.1.7/32", "action": "deny",
     "tier": "incident"}]
TIERS = ("incident", "app")


def _tiered(rules_, tiers=TIERS, policy_set=0):
    policy = normalize(rules_, {}, {"egress": "allow", "ingress": "allow"}, tiers=list(tiers))
    return policy, _compiler.compile_policy(policy, policy_set)


def test_without_tiers_the_more_specific_allow_beats_the_quarantine():
    untiered = [dict((k, v) for k, v in rule.items() if k != "tier") for rule in QUARANTINE]
    policy, compiled = _compile([WEB_TO_DB] + untiered)
    _check(policy, compiled, 0, _pkt(src="198.18.1.7"), "allow", "web-to-db")


def test_a_quarantine_in_the_top_tier_wins_over_a_more_specific_allow():
    policy, compiled = _tiered([WEB_TO_DB] + QUARANTINE)
    _check(policy, compiled, 0, _pkt(src="198.18.1.7"), "deny", "quarantine-out")
    _check(policy, compiled, 0, _pkt(src="198.18.1.8"), "allow", "web-to-db")
    _check(policy, compiled, 0, _pkt("ingress", src="198.18.9.9", dst="198.18.1.7", dport=22),
           "deny", "quarantine-in")


def test_an_exact_rule_of_a_lower_tier_gets_no_hash_entry_where_a_higher_tier_matches():
    exact = {"name": "one-flow", "direction": "egress", "src": "198.18.1.7/32",
             "dst": "198.18.2.20/32", "protocol": "tcp", "src_ports": [40000],
             "dst_ports": [5432], "action": "allow"}
    other = dict(exact, name="other-flow", src="198.18.1.8/32")
    policy, compiled = _tiered([exact, other] + QUARANTINE)
    assert len(compiled.policy_map) == 1          # other-flow's only
    _check(policy, compiled, 0, _pkt(src="198.18.1.7"), "deny", "quarantine-out")
    _check(policy, compiled, 0, _pkt(src="198.18.1.8"), "allow", "other-flow")


def test_rules_that_match_the_same_traffic_may_disagree_across_tiers_only():
    allow_all = {"name": "allow-all", "direction": "egress", "action": "allow"}
    deny_all = {"name": "deny-all", "direction": "egress", "action": "deny", "tier": "incident"}
    policy, compiled = _tiered([allow_all, deny_all])
    _check(policy, compiled, 0, _pkt(), "deny", "deny-all")
    with pytest.raises(PolicyError) as raised:
        _tiered([allow_all, dict(deny_all, tier="app")])
    assert "conflicts with rule 'allow-all'" in str(raised.value)


def test_a_tier_lookup_costs_no_more_steps_than_without_tiers():
    """Tiers are folded into the candidates: the kernel still walks at most four stages."""
    rules_ = [dict(WEB_TO_DB, name="app-%d" % i, dst="198.18.2.%d/32" % i) for i in range(1, 60)]
    rules_ += [dict(rule, name="q-%s" % rule["name"]) for rule in QUARANTINE]
    policy, compiled = _tiered(rules_)
    kernel = Kernel(compiled)
    for last in range(1, 60):
        for src in ("198.18.1.7", "198.18.1.8"):
            pkt = _pkt(src=src, dst="198.18.2.%d" % last)
            assert kernel.decide(0, policy.default_action, pkt) == model(policy, pkt)


@pytest.mark.parametrize("tiers, rule_tier, message", [
    (None, "incident", "tier 'incident': names a tier, but the policy declares none"),
    (["incident", "app"], "incdent", "tier 'incdent': must be one of the declared tiers "
                                     "(incident, app), did you mean incident?"),
    (["incident", "incident"], "incident", "tiers[1] 'incident': is declared twice (tiers[0] too)"),
    ("incident", "incident", "tiers 'incident': must be a list of tier names, highest first, got a string"),
])
def test_bad_tiers_are_refused_by_field(tiers, rule_tier, message):
    with pytest.raises(PolicyError) as raised:
        normalize([dict(QUARANTINE[0], tier=rule_tier)], {}, None, tiers=tiers)
    assert message in str(raised.value)

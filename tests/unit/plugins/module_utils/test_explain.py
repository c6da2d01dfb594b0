# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""microseg_explain's logic without a kernel: the model's answer and rank order over a policy
built with normalize(), the kernel's answer over compiled entries (_lookup.Entries, the walk
the module runs over the pinned maps), and the input checks."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _explain
from ansible_collections.ebpf.microseg.plugins.module_utils import _lookup
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import normalize
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import verdict

SEGMENTS = {"web": ["198.18.1.0/24"], "db": ["198.18.2.10/32"]}
DENY = {"egress": "deny", "ingress": "deny"}
WEB_TO_DB = {"name": "web-to-db", "direction": "both", "src": ["web"], "dst": ["db"],
             "protocol": "tcp", "dst_ports": [5432], "action": "allow"}
QUARANTINE_OUT = {"name": "quarantine-out", "direction": "egress", "src": "198.18.1.7/32",
                  "action": "deny"}
QUARANTINE_IN = {"name": "quarantine-in", "direction": "ingress", "dst": "198.18.1.7/32",
                 "action": "deny"}
FLOW = {"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": "tcp", "dst_port": 5432}


def explain(rules, flows, default=None, corrupt=None, policy_set=0, tiers=None):
    """(results, disagreements) with the kernel's answer from the compiled entries;
    corrupt(entries) may change them first, as a bad write to the kernel would."""
    policy = normalize(rules, SEGMENTS, default or DENY, tiers=tiers)
    entries = _lookup.Entries(_compiler.compile_policy(policy, policy_set))
    if corrupt is not None:
        corrupt(entries)
    by_id = dict((rule.policy_id, rule.name) for rule in policy.rules)
    return _explain.explain_flows(
        policy, _explain.parse_flows(flows),
        lambda packet: _explain.kernel_answer(entries, policy_set, policy.default_action,
                                              by_id, packet))


def names(answer):
    return [rule["name"] for rule in answer["matching_rules"]]


# -- the model's answer ---------------------------------------------------------------------

def test_quarantine_deny_loses_to_the_more_specific_allow_as_the_model_says():
    """A deny on the container's /32 against an allow naming the remote /32: today the
    remote prefix is compared first, so the allow decides (docs/architecture.md section 3)."""
    policy = normalize([QUARANTINE_OUT, WEB_TO_DB], SEGMENTS, DENY)
    model = verdict(policy, "egress", "198.18.1.7", "198.18.2.10", 6, 0, 5432)
    assert model == ("allow", policy.by_name["web-to-db"].policy_id)

    results, disagreements = explain([QUARANTINE_OUT, WEB_TO_DB], [FLOW])
    assert disagreements == []
    egress = results[0]["egress"]
    assert egress["verdict"] == "allow" and egress["decided_by"] == "web-to-db"
    assert egress["container"] == "198.18.1.7"
    assert names(egress) == ["web-to-db", "quarantine-out"]
    winner, loser = egress["matching_rules"]
    assert winner["rank"] == {"tier": 0, "exact": 0, "remote_prefix": 32, "local_prefix": 24,
                              "dst_port": 2, "src_port": 0, "protocol": 1, "action": 0}
    assert loser["rank"] == {"tier": 0, "exact": 0, "remote_prefix": 0, "local_prefix": 32,
                             "dst_port": 0, "src_port": 0, "protocol": 0, "action": 2}
    assert winner["differs_on"] == loser["differs_on"] == "remote_prefix"
    assert winner["why"].startswith("decides: beats 'quarantine-out' on remote_prefix (32 > 0")
    assert loser["why"].startswith("below 'web-to-db' on remote_prefix (0 < 32")
    assert egress["kernel"]["decided_by"] == "web-to-db" and egress["agree"] is True


def test_a_top_tier_quarantine_decides_and_the_allow_ranks_below_it_on_tier():
    tiered = [dict(QUARANTINE_OUT, tier="incident"), WEB_TO_DB]
    results, disagreements = explain(tiered, [FLOW], tiers=["incident", "app"])
    assert disagreements == []
    egress = results[0]["egress"]
    assert (egress["verdict"], egress["decided_by"]) == ("deny", "quarantine-out")
    assert names(egress) == ["quarantine-out", "web-to-db"]
    assert egress["matching_rules"][1]["differs_on"] == "tier"
    assert egress["kernel"]["decided_by"] == "quarantine-out" and egress["agree"] is True


def test_both_directions_are_the_same_five_tuple_at_each_hook():
    results, _disagreements = explain([QUARANTINE_OUT, QUARANTINE_IN, WEB_TO_DB], [FLOW])
    flow = results[0]
    assert set(("egress", "ingress")) <= set(flow)
    ingress = flow["ingress"]
    # At the receiver's hook the container is the destination; quarantine-in names 1.7 as
    # dst, so it does not match a packet from 1.7.
    assert ingress["container"] == "198.18.2.10"
    assert names(ingress) == ["web-to-db"]
    assert ingress["matching_rules"][0]["why"] == "decides: the only matching rule"
    assert ingress["matching_rules"][0]["rank"]["remote_prefix"] == 24
    assert flow["verdict"] == "allow"
    back = explain([QUARANTINE_OUT, QUARANTINE_IN, WEB_TO_DB],
                   [{"src": "198.18.2.10", "dst": "198.18.1.7", "protocol": "tcp",
                     "dst_port": 5432, "direction": "ingress"}])[0][0]
    assert "egress" not in back
    assert back["ingress"]["decided_by"] == "quarantine-in" and back["verdict"] == "deny"


def test_no_matching_rule_is_decided_by_the_default_of_the_direction():
    results, disagreements = explain([WEB_TO_DB], [
        {"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": "udp", "dst_port": 53}],
        default={"egress": "allow", "ingress": "deny"})
    flow = results[0]
    assert (flow["egress"]["verdict"], flow["egress"]["decided_by"]) == ("allow", "default")
    assert (flow["ingress"]["verdict"], flow["ingress"]["decided_by"]) == ("deny", "default")
    assert flow["egress"]["matching_rules"] == [] and flow["egress"]["policy_id"] == 0
    assert flow["egress"]["kernel"]["decided_by"] == "default"
    assert flow["verdict"] == "deny" and disagreements == []


def test_an_equal_rank_tie_goes_to_deny_and_says_so():
    allow = {"name": "web-out", "direction": "egress", "src": ["web"], "action": "allow",
             "protocol": "tcp"}
    deny = {"name": "db-in-deny", "direction": "egress", "dst": ["db"], "action": "deny"}
    log = dict(deny, name="db-in-log", action="log", protocol="udp")
    results, _disagreements = explain([allow, deny, log], [FLOW])
    egress = results[0]["egress"]
    # deny: remote 32 beats allow's remote 0.
    assert names(egress) == ["db-in-deny", "web-out"]
    tie = [dict(allow, name="a", src=None, dst=["db"]), dict(deny, name="d")]
    egress = explain(tie, [FLOW])[0][0]["egress"]
    assert names(egress) == ["a", "d"]      # a names tcp: protocol 1 beats any
    assert egress["matching_rules"][1]["differs_on"] == "protocol"
    # The same rank but not the same traffic (that would be refused as a conflict).
    same = [dict(allow, name="a", src=None, dst=["db"], dst_ports=["5400-5500"]),
            dict(deny, name="d", protocol="tcp", dst_ports=["5430-5440"])]
    egress = explain(same, [FLOW])[0][0]["egress"]
    assert names(egress) == ["d", "a"] and egress["verdict"] == "deny"
    assert egress["matching_rules"][0]["differs_on"] == "action"
    assert "on a tie deny (2) beats log (1)" in egress["matching_rules"][0]["why"]


def test_an_exact_rule_outranks_every_prefix_and_the_kernel_finds_it_in_the_hash():
    exact = {"name": "exact", "direction": "egress", "src": "198.18.1.7/32",
             "dst": "198.18.2.10/32", "protocol": "tcp", "src_ports": [40000],
             "dst_ports": [5432], "action": "log"}
    results, disagreements = explain([WEB_TO_DB, exact], [dict(FLOW, src_port=40000)])
    egress = results[0]["egress"]
    assert names(egress) == ["exact", "web-to-db"] and egress["verdict"] == "log"
    assert egress["matching_rules"][1]["differs_on"] == "exact"
    assert egress["kernel"]["decided_at"] == "policy_map"
    assert egress["kernel"]["lookups"][0].endswith("log, policy id %d" % egress["policy_id"])
    assert disagreements == []


def test_icmp_and_other_protocols_meet_portless_rules_only():
    ping = {"name": "ping", "direction": "both", "src": ["web"], "dst": ["db"],
            "protocol": "icmp", "action": "allow"}
    results, _disagreements = explain([WEB_TO_DB, ping], [
        {"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": "icmp"},
        {"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": 47, "direction": "egress"}])
    assert results[0]["egress"]["decided_by"] == "ping"
    assert results[0]["protocol"] == "icmp" and results[0]["dst_port"] == 0
    assert results[1]["egress"]["decided_by"] == "default" and results[1]["protocol"] == 47


# -- the kernel's answer ----------------------------------------------------------------------

def _flip_final_actions(entries):
    """Turn every final allow of the LPM maps into a deny (one rule's entries, here)."""
    for trie in entries.tries.values():
        for pairs in trie.values():
            for _plen, _have, _width, value in pairs:
                if value.flags & _abi.RANGE_FLAG_FINAL and \
                        value.action == _abi.ACTIONS["allow"]:
                    value.action = _abi.ACTIONS["deny"]


def test_a_corrupted_entry_is_a_disagreement_naming_both_answers():
    results, disagreements = explain([WEB_TO_DB], [FLOW], corrupt=_flip_final_actions)
    egress = results[0]["egress"]
    assert egress["agree"] is False
    assert egress["verdict"] == "allow" and egress["kernel"]["verdict"] == "deny"
    assert egress["kernel"]["decided_by"] == "web-to-db"
    assert [(d["flow"], d["direction"]) for d in disagreements] == \
        [(0, "egress"), (0, "ingress")]
    assert disagreements[0]["message"] == (
        "flows[0] egress (198.18.1.7:0 -> 198.18.2.10 tcp/5432): the model says allow by "
        "'web-to-db', the kernel's maps say deny by 'web-to-db' (decided at %s)"
        % egress["kernel"]["decided_at"])


def test_a_policy_id_the_policy_does_not_know_is_named_as_such():
    def foreign(entries):
        for trie in entries.tries.values():
            for pairs in trie.values():
                for _plen, _have, _width, value in pairs:
                    if value.flags & _abi.RANGE_FLAG_FINAL:
                        value.policy_id = 4242
    results, disagreements = explain([WEB_TO_DB], [FLOW], corrupt=foreign)
    assert results[0]["egress"]["kernel"]["decided_by"] == \
        "policy id 4242 (no rule of the stored policy)"
    assert "by policy id 4242 (no rule" in disagreements[0]["message"]


def test_the_kernel_walk_lists_every_lookup():
    policy = normalize([WEB_TO_DB], SEGMENTS, DENY)
    entries = _lookup.Entries(_compiler.compile_policy(policy, 1))
    packet = {"direction": "egress", "src": "198.18.1.7", "dst": "198.18.2.10", "protocol": 6,
              "src_port": 40000, "dst_port": 5432}
    decision = _lookup.decide(entries.lookup, 1, policy.default_action, packet)
    assert decision.pair() == ("allow", policy.by_name["web-to-db"].policy_id)
    steps = decision.describe_steps()
    assert steps[0] == "policy_map: exact 198.18.1.7:40000 -> 198.18.2.10:5432 proto 6: miss"
    assert steps[1].startswith("ip_range_map: class 0x2 ip 198.18.2.10: ")
    assert len(steps) == len(decision.steps) <= 5
    assert decision.decided_at == decision.steps[-1][0]
    # The other set holds nothing: the walk misses at once and takes the default.
    other = _lookup.decide(entries.lookup, 0, policy.default_action, packet)
    assert (other.pair(), other.decided_at, len(other.steps)) == (("deny", 0), "default", 2)


# -- input -------------------------------------------------------------------------------------

def test_flows_are_parsed_with_defaults():
    flows = _explain.parse_flows([dict(FLOW), {"src": "198.18.1.7/32", "dst": "198.18.2.10",
                                               "protocol": "UDP", "dst_port": "53",
                                               "src_port": 1000, "direction": "egress"}])
    assert flows == [
        {"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": 6, "dst_port": 5432,
         "src_port": 0, "direction": "both"},
        {"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": 17, "dst_port": 53,
         "src_port": 1000, "direction": "egress"}]
    assert [d for d, _p in _explain.packets(flows[0])] == ["egress", "ingress"]


@pytest.mark.parametrize("flow, message", [
    (dict(FLOW, dst_port=70000), "flows[1].dst_port 70000: port 70000 is out of range 0-65535"),
    (dict(FLOW, src="198.18.1.0/24"), "flows[1].src '198.18.1.0/24': must be one address, "
                                      "not a CIDR"),
    (dict(FLOW, dst="198.18.1"), "flows[1].dst '198.18.1': not an IPv4 address or CIDR"),
    (dict(FLOW, protocol="any"), "flows[1].protocol 'any': a packet has one protocol"),
    (dict(FLOW, protocol="sctpx"), "flows[1].protocol 'sctpx': must be tcp, udp, icmp or an "
                                   "IANA number 0-255"),
    (dict(FLOW, direction="out"), "flows[1].direction 'out': must be egress, ingress or both"),
    (dict(FLOW, direction="egres"), "must be egress, ingress or both, did you mean egress?"),
    (dict(FLOW, dport=80), "flows[1].dport: unknown field, did you mean dst_port?"),
    ({"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": "tcp"},
     "flows[1].dst_port: is required for tcp"),
    ({"src": "198.18.1.7", "dst": "198.18.2.10", "protocol": "icmp", "dst_port": 8},
     "flows[1].dst_port 8: ports apply to tcp and udp only, not icmp"),
    (dict(FLOW, dst_port=True), "flows[1].dst_port True: must be a port number 0-65535"),
    ({"dst": "198.18.2.10", "protocol": "tcp", "dst_port": 1}, "flows[1].src: is required"),
    ("198.18.1.7", "flows[1]: must be a mapping of src, dst, protocol"),
])
def test_bad_flows_are_refused_naming_the_flow_and_the_field(flow, message):
    with pytest.raises(_explain.ExplainError) as raised:
        _explain.parse_flows([FLOW, flow])
    assert message in str(raised.value)
    assert str(raised.value).endswith("(nothing was read)")
    assert raised.value.errors and message in raised.value.errors[0]


def test_every_bad_field_is_listed_at_once():
    with pytest.raises(_explain.ExplainError) as raised:
        _explain.parse_flows([dict(FLOW, dst_port=-1), dict(FLOW, src="x", direction=1)])
    assert str(raised.value).startswith("3 errors in flows, nothing was read: ")
    assert [line.split(":")[0] for line in raised.value.errors] == \
        ["flows[0].dst_port -1", "flows[1].src 'x'", "flows[1].direction 1"]


@pytest.mark.parametrize("flows", [[], None, {"src": "198.18.1.7"}])
def test_flows_must_be_a_non_empty_list(flows):
    with pytest.raises(_explain.ExplainError) as raised:
        _explain.parse_flows(flows)
    assert "flows: must be a non-empty list" in str(raised.value)


def test_bad_input_is_refused_before_the_host_is_looked_at(tmp_path):
    with pytest.raises(_explain.ExplainError) as raised:
        _explain.run(str(tmp_path), [dict(FLOW, protocol="bogus")])
    assert "flows[0].protocol" in str(raised.value)
    with pytest.raises(_explain.ExplainError) as raised:
        _explain.run(str(tmp_path / "nothing"), [FLOW])
    assert str(raised.value) == "no microseg program under %s: run " \
        "ebpf.microseg.microseg_program first" % (tmp_path / "nothing")


def test_the_stored_source_normalizes_to_the_policy_converged():
    policy = normalize([WEB_TO_DB, QUARANTINE_OUT], SEGMENTS, DENY)
    source = {"rules": policy.to_rules(), "segments": policy.segments_dict(),
              "default_action": DENY, "entry_counts": {}, "input_digest": "x"}
    again = _explain.model_policy(source, {"egress": "allow", "ingress": "allow"})
    assert [(r.name, r.policy_id) for r in again.rules] == \
        [(r.name, r.policy_id) for r in policy.rules]
    assert again.default_action == DENY
    empty = _explain.model_policy(None, {"egress": "allow", "ingress": "deny"})
    assert empty.rules == [] and empty.default_action["ingress"] == "deny"
    with pytest.raises(_explain.ExplainError) as raised:
        _explain.model_policy({"rules": [{"name": "x", "action": "maybe"}]}, DENY)
    assert "no longer normalizes" in str(raised.value)


def test_the_kernel_answer_reads_through_any_lookup():
    """kernel_answer() needs nothing of PinnedMaps but lookup(name, key)."""
    class Empty:
        @staticmethod
        def lookup(_name, _key):
            return None
    got = _explain.kernel_answer(Empty(), 0, DENY, {}, dict(
        direction="ingress", src="198.18.1.7", dst="198.18.2.10", protocol=6, src_port=1,
        dst_port=2))
    assert (got["verdict"], got["decided_by"], got["decided_at"]) == ("deny", "default",
                                                                      "default")
    assert _maps.PolicyKey  # the keys are the _maps mirrors the kernel's maps take

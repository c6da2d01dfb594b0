# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""The real kernel's verdict equals the reference model's, packet by packet.

Hypothesis draws colliding rule sets (the strategies the compiler's unit test uses too) and
packets aimed at their boundaries. Each rule set is compiled into the active policy set of
the real program, a second random rule set into the inactive one (it must never be seen),
and every packet runs through BPF_PROG_TEST_RUN as the first packet of its flow. Allow and
log pass, deny drops; the session the packet created also records the action and the
policy id, which must be the model's.

A fixed corpus of tricky cases (tests/functional/differential_corpus.json) is replayed
every run. Reproduce a random run with MICROSEG_DIFF_SEED=<the seed printed>.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import random
import time

import pytest
from hypothesis import given, seed, settings, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import normalize
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import (
    PASSTHROUGH_MODES, degraded_passes, verdict)
from ansible_collections.ebpf.microseg.tests.harness import packets as P
from ansible_collections.ebpf.microseg.tests.harness.datapath import TC_ACT_OK, Datapath
from ansible_collections.ebpf.microseg.tests.harness.policy_strategies import (
    build_policy, policy_and_packets, policy_docs)

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "differential_corpus.json")
SEED = int(os.environ.get("MICROSEG_DIFF_SEED") or random.SystemRandom().randrange(1 << 32))
EXAMPLES = int(os.environ.get("MICROSEG_DIFF_EXAMPLES") or 500)
PACKETS_PER_EXAMPLE = 16
MIN_CASES = 2000
CASES = {"random": 0, "degraded": 0}
ICMP_IDENT = 1


@pytest.fixture(scope="module")
def kernel(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("differential seed %d (rerun with MICROSEG_DIFF_SEED=%d)"
                                % (SEED, SEED))
    dp = Datapath(sizes={"policy_map_size": 4096, "range_map_size": 65536,
                         "session_map_size": 4096, "rule_stats_size": 4096})
    try:
        yield dp
    finally:
        dp.close()


def frame(pkt):
    src, dst, proto = pkt["src"], pkt["dst"], pkt["protocol"]
    if proto == 6:
        return P.tcp_frame(src, dst, pkt["src_port"], pkt["dst_port"], P.SYN)
    if proto == 17:
        return P.udp_frame(src, dst, pkt["src_port"], pkt["dst_port"])
    if proto == 1:
        return P.icmp_frame(src, dst, ident=ICMP_IDENT)
    return P.ether(P.ETH_P_IP, P.ipv4(src, dst, proto, b"\0" * 8))


def load(dp, policy, policy_set, decoy=None):
    """policy into policy_set (made active), decoy (if any) into the other set."""
    dp.reset(default_action=policy.default_action, policy_epoch=policy_set)
    assert dp.policy_set == policy_set
    compiled = [_compiler.compile_policy(policy, policy_set)]
    if decoy is not None:
        compiled.append(_compiler.compile_policy(decoy, policy_set ^ 1))
    for one in compiled:
        for name, pairs in one.entries():
            if pairs:
                dp.maps.update_many(name, pairs)


def rule_that_decided(dp):
    """policy_id of the one rule the kernel counted a hit for since the last clear, or 0."""
    hits = [key.value for key, stats in dp.maps.items("rule_stats_map") if stats.hits]
    assert len(hits) <= 1, hits
    return hits[0] if hits else 0


def run_packet(dp, pkt):
    """(passed, (action, policy_id) the kernel decided).

    An allowed packet's session records the verdict; a denied one leaves no session
    (nothing another initiator could hit), so its rule comes from the per-rule counters.
    """
    dp.maps.clear("session_map")    # every packet is the first of its flow
    dp.maps.clear("rule_stats_map")
    passed = dp.run(frame(pkt), pkt["direction"]) == TC_ACT_OK
    proto = pkt["protocol"]
    if proto in (6, 17):
        sport, dport = pkt["src_port"], pkt["dst_port"]
    elif proto == 1:
        sport = dport = ICMP_IDENT
    else:
        sport = dport = 0
    if pkt["direction"] == "egress":
        session = dp.session(pkt["src"], pkt["dst"], sport, dport, proto)
    else:
        session = dp.session(pkt["dst"], pkt["src"], dport, sport, proto)
    if session is not None:
        assert session.action != _abi.MS_ACTION_DENY, "a denied first packet left a session"
        decided = (_abi.ACTION_NAMES[session.action], session.policy_id)
    else:
        decided = ("deny" if not passed else "untracked", rule_that_decided(dp))
    return passed, decided


def model(policy, pkt):
    return verdict(policy, pkt["direction"], pkt["src"], pkt["dst"], pkt["protocol"],
                   pkt["src_port"], pkt["dst_port"])


def _describe(doc, pkt, want, got):
    return "seed %d\nkernel %s, model %s\npolicy: %s\npacket: %s" % (
        SEED, got, want, json.dumps(doc, sort_keys=True), json.dumps(pkt, sort_keys=True))


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None)
@given(case=policy_and_packets(PACKETS_PER_EXAMPLE, max_rules=12, min_rules=2),
       decoy=policy_docs(1, 6), policy_set=st.integers(0, 1))
def test_kernel_agrees_with_model(kernel, case, decoy, policy_set):
    doc, pkts = case
    policy = build_policy(doc)
    load(kernel, policy, policy_set, build_policy(decoy))
    for pkt in pkts:
        want = model(policy, pkt)
        passed, decided = run_packet(kernel, pkt)
        CASES["random"] += 1
        assert (passed, decided) == (want[0] != "deny", want), \
            _describe(doc, pkt, want, (passed, decided))


def degrade(dp, passthrough):
    """Critical pressure from here on: every new flow is degraded (never tracked)."""
    dp.set_config(pressure_warn_sessions=1, pressure_crit_sessions=1,
                  degraded_passthrough=_abi.PASSTHROUGH_MODES[passthrough])
    pressure = _maps.MapPressure(total_sessions=1, last_check=time.monotonic_ns())
    dp.maps.write_pressure(pressure)


@seed(SEED)
@settings(max_examples=max(EXAMPLES // 5, 20), deadline=None)
@given(case=policy_and_packets(PACKETS_PER_EXAMPLE, max_rules=12, min_rules=2),
       passthrough=st.sampled_from(PASSTHROUGH_MODES))
def test_degraded_kernel_agrees_with_model(kernel, case, passthrough):
    """Under critical pressure: the same verdicts, and DNS/ICMP passthrough by its mode."""
    doc, pkts = case
    policy = build_policy(doc)
    load(kernel, policy, 0)
    degrade(kernel, passthrough)
    for pkt in pkts:
        passes, _action, policy_id = degraded_passes(
            policy, pkt["direction"], pkt["src"], pkt["dst"], pkt["protocol"],
            pkt["src_port"], pkt["dst_port"], passthrough)
        kernel.maps.clear("rule_stats_map")
        passed = kernel.run(frame(pkt), pkt["direction"]) == TC_ACT_OK
        CASES["degraded"] += 1
        assert not kernel.sessions(), "a degraded new flow was tracked"
        assert (passed, rule_that_decided(kernel)) == (passes, policy_id), \
            _describe(doc, pkt, (passes, policy_id, passthrough),
                      (passed, rule_that_decided(kernel)))


def test_enough_random_cases_ran():
    """The CI budget promises at least 2,000 random packet cases per run."""
    if CASES["random"] == 0:
        pytest.skip("the random differential test was not selected")
    assert CASES["random"] >= MIN_CASES or EXAMPLES * PACKETS_PER_EXAMPLE < MIN_CASES, \
        CASES["random"]


def _corpus():
    with open(CORPUS) as handle:
        return json.load(handle)


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: c["name"])
def test_corpus(kernel, case):
    doc = case["policy"]
    policy = normalize(doc["rules"], doc.get("segments", {}), doc["default_action"],
                       tiers=doc.get("tiers"))
    for policy_set in (0, 1):
        load(kernel, policy, policy_set)
        for pkt, action, rule in zip(case["packets"], case["expected"],
                                     case["expected_rule"]):
            want = (action, policy.by_name[rule].policy_id if rule else 0)
            assert model(policy, pkt) == want, ("model", pkt)
            got = run_packet(kernel, pkt)
            assert got == (action != "deny", want), ("kernel", pkt, got)

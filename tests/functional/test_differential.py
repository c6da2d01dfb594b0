# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's verdict equals the reference model's, packet by packet.

Hypothesis draws colliding rule sets and boundary packets; each rule set is compiled into
the real program's maps and every packet goes through BPF_PROG_TEST_RUN. Allow and log
pass, deny drops. A fixed corpus of tricky cases is replayed every run.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os

import pytest
from hypothesis import given, settings

from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    PolicyError, normalize)
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import verdict
from ansible_collections.ebpf.microseg.tests.functional import packets as P
from ansible_collections.ebpf.microseg.tests.functional.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.unit.plugins.module_utils import (
    policy_strategies as S)

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "differential_corpus.json")
CASES = {"count": 0}


@pytest.fixture(scope="module")
def kernel():
    dp = Datapath(sizes={"policy_map_size": 4096, "range_map_size": 65536,
                         "session_map_size": 4096})
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
        return P.icmp_frame(src, dst)
    return P.ether(P.ETH_P_IP, P.ipv4(src, dst, proto, b"\0" * 8))


def load(dp, policy):
    dp.reset(default_action=policy.default_action)
    compiled = _compiler.compile_policy(policy, dp.policy_set)
    for name in ("policy_map", "ip_range_map", "local_range_map", "port_range_map",
                 "sport_range_map"):
        pairs = getattr(compiled, name)
        if pairs:
            dp.maps.update_many(name, pairs)


def kernel_passes(dp, pkt):
    dp.maps.clear("session_map")   # every packet is the first of its flow
    return dp.run(frame(pkt), pkt["direction"]) == 0


def model_action(policy, pkt):
    return verdict(policy, pkt["direction"], pkt["src"], pkt["dst"], pkt["protocol"],
                   pkt["src_port"], pkt["dst_port"])[0]


@settings(max_examples=160, deadline=None)
@given(case=S.policy_and_packets(14))
def test_kernel_agrees_with_model(kernel, case):
    doc, packets = case
    try:
        policy = normalize(doc["rules"], doc["segments"], doc["default_action"])
    except PolicyError:
        return
    load(kernel, policy)
    for pkt in packets:
        want = model_action(policy, pkt) != "deny"
        got = kernel_passes(kernel, pkt)
        CASES["count"] += 1
        assert got == want, "kernel %s, model %s\npolicy: %s\npacket: %s" % (
            "pass" if got else "drop", model_action(policy, pkt), json.dumps(doc), pkt)


def test_enough_random_cases_ran():
    """The CI budget promises at least 2,000 random packet cases per run."""
    assert CASES["count"] >= 2000, CASES["count"]


def _corpus():
    with open(CORPUS) as handle:
        return json.load(handle)


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: c["name"])
def test_corpus(kernel, case):
    policy = normalize(case["policy"]["rules"], case["policy"].get("segments", {}),
                       case["policy"]["default_action"])
    load(kernel, policy)
    for pkt, expected in zip(case["packets"], case["expected"]):
        assert model_action(policy, pkt) == expected, ("model", pkt)
        assert kernel_passes(kernel, pkt) == (expected != "deny"), ("kernel", pkt)

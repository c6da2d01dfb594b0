# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compiler against the model, through a Python rendition of the kernel's lookups."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from hypothesis import given, settings, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    PolicyError, normalize)
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import verdict
from ansible_collections.ebpf.microseg.tests.unit.plugins.module_utils import (
    policy_strategies as S)
from ansible_collections.ebpf.microseg.tests.unit.plugins.module_utils.kernel_sim import simulate


def _normalized(doc):
    try:
        return normalize(doc["rules"], doc["segments"], doc["default_action"])
    except PolicyError:
        return None   # generated conflicts are valid rejections, not compiler cases


@settings(max_examples=300, deadline=None)
@given(S.policy_and_packets(12), st.integers(0, 1))
def test_compiled_lookups_equal_the_model(case, policy_set):
    doc, packets = case
    policy = _normalized(doc)
    if policy is None:
        return
    compiled = _compiler.compile_policy(policy, policy_set)
    for pkt in packets:
        want = verdict(policy, pkt["direction"], pkt["src"], pkt["dst"], pkt["protocol"],
                       pkt["src_port"], pkt["dst_port"])[0]
        got = simulate(compiled, policy_set, policy.default_action, pkt["direction"],
                       pkt["src"], pkt["dst"], pkt["protocol"], pkt["src_port"],
                       pkt["dst_port"])
        assert got == want, (doc, pkt)


def test_blocks_cover_ranges_exactly():
    for low, high in [(0, 65535), (80, 443), (5432, 5432), (1, 65534), (8000, 8080)]:
        covered = []
        for start, bits in _compiler._blocks(low, high):
            size = 1 << (16 - bits)
            assert start % size == 0
            covered.extend(range(start, start + size))
        assert covered == list(range(low, high + 1))


def test_entry_count_stays_bounded_for_many_host_rules():
    rules = [{"name": "h%d" % i, "direction": "egress", "dst": "198.19.%d.%d/32" % (i >> 8, i & 255),
              "protocol": "tcp", "dst_ports": [443], "action": "allow"} for i in range(2000)]
    compiled = _compiler.compile_policy(normalize(rules, {}, None), 0)
    counts = compiled.counts()
    assert counts["ip_range_map"] == 2000
    assert counts["local_range_map"] <= 2000
    # One class per distinct candidate set: every host rule needs its own, nothing more.
    assert counts["port_range_map"] <= 2000 * 2


def test_exact_rules_go_to_the_hash_map_only():
    rules = [{"name": "pin", "direction": "both", "src": "198.18.1.5/32", "dst": "198.18.2.10/32",
              "src_ports": [40000], "dst_ports": [5432], "protocol": "tcp", "action": "deny"}]
    compiled = _compiler.compile_policy(normalize(rules, {}, None), 1)
    assert len(compiled.policy_map) == 2
    assert all(k.policy_set == 1 for k, _v in compiled.policy_map)
    assert sum(compiled.counts().values()) == 2

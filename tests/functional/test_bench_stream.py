# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The MS_BENCH build that bench/run.py measures new flows with.

bench_next_flow (C) and FlowStream (Python, tests/harness/flow_stream.py) must name the same
flows, or the bench would measure session hits, or rules that never match, while calling
them new flows.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import struct

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness import flow_stream
from ansible_collections.ebpf.microseg.tests.harness import packets as P
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath


@pytest.fixture(scope="module")
def bench_dp():
    dp = Datapath(functions=["microseg_from_container", "microseg_bench_new_flow",
                             "microseg_bench_floor"],
                  defines=("MS_BENCH",))
    try:
        yield dp
    finally:
        dp.close()
    assert not os.path.exists(dp.pin_path), "remove_pins left the bench map behind"


def _session_keys(dp):
    return sorted(key.pack() for key, _value in dp.maps.items("session_map"))


def test_each_repetition_is_a_new_flow_the_stream_can_name(bench_dp):
    dp = bench_dp
    dp.reset()
    dp.live_sessions = 0
    stream = flow_stream.FlowStream("198.18.232.0", 7, 1024, 9)   # 7 does not divide 50
    durations = flow_stream.streamed_run(dp, dp.fds["microseg_bench_new_flow"], stream, 50, 1,
                                         forget=False)
    assert durations[0] > 0
    assert _session_keys(dp) == sorted(stream.session_keys(50))
    assert dp.stats()["new_sessions"] == 50
    assert dp.stats()["session_hits"] == 0


def test_forget_removes_exactly_the_streamed_sessions(bench_dp):
    dp = bench_dp
    dp.reset()
    dp.live_sessions = 0
    dp.egress(P.udp_frame(flow_stream.C, "198.18.2.1", 40000, 5432))   # not in the stream
    flow_stream.streamed_run(dp, dp.fds["microseg_bench_new_flow"], flow_stream.CIDR_STREAM,
                             300, 2)
    keys = list(dp.maps.items("session_map"))
    assert len(keys) == 1
    assert _maps.u32_to_ip(keys[0][0].dst_ip) == "198.18.2.1"
    # Both rounds started from flow 0: 600 new sessions, none found in the map.
    assert dp.stats()["new_sessions"] == 601


def test_exact_stream_hits_one_loaded_rule_per_flow(bench_dp):
    dp = bench_dp
    dp.reset(default_action={"egress": "deny", "ingress": "deny"})
    dp.live_sessions = 0
    flow_stream.load_exact_rules(dp, 60)
    flow_stream.streamed_run(dp, dp.fds["microseg_bench_new_flow"], flow_stream.EXACT_STREAM,
                             60, 1, forget=False)
    sessions = [value for _key, value in dp.maps.items("session_map")]
    assert len(sessions) == 60
    assert set(value.policy_id for value in sessions) == set(range(1000, 1060))
    assert all(value.action == _abi.ACTIONS["allow"] for value in sessions)


def test_floor_rewrites_without_tracking(bench_dp):
    dp = bench_dp
    dp.reset()
    dp.live_sessions = 0
    flow_stream.streamed_run(dp, dp.fds["microseg_bench_floor"], flow_stream.DEFAULT_STREAM,
                             100, 1, forget=False)
    assert _session_keys(dp) == []
    slots = bpf.obj_get(os.path.join(dp.pin_path, "bench_flow_map"))
    try:
        counter = bpf.map_lookup(slots, struct.pack("=I", 0), 4)
    finally:
        bpf.close(slots)
    assert struct.unpack("=I", counter)[0] == 100


def test_product_build_has_no_bench_map(tmp_path):
    del tmp_path
    dp = Datapath()
    try:
        assert "bench_flow_map" not in os.listdir(dp.pin_path)
        assert "bench_flow_map" in _loader.OTHER_PINS
    finally:
        dp.close()

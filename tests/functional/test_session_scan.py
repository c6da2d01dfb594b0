# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bulk session scans (facts summary, map counts) against the same map read entry by
entry through the ctypes mirrors: sessions written to a real kernel map, read back both ways."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import collections
import random

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _sessions
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath

# More than two 8,192-entry batches, so the scans cross batch boundaries.
SESSIONS = 20000


@pytest.fixture(scope="module")
def loaded():
    dp = Datapath(sizes={"session_map_size": 65536})
    try:
        rng = random.Random(11)
        pairs = []
        for i in range(SESSIONS):
            protocol = rng.choice((_sessions.TCP, _sessions.UDP, _sessions.ICMP, 47))
            key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.19.%d.%d" % (i >> 8 & 255, i & 255)),
                                   dst_ip=_maps.ip_to_u32("198.18.0.1"), src_port=i & 0xffff,
                                   dst_port=80, protocol=protocol)
            value = _maps.SessionValue(packets=1, last_seen=rng.randrange(1, 1 << 40),
                                       action=rng.choice((_abi.MS_ACTION_ALLOW, _abi.MS_ACTION_DENY,
                                                          _abi.MS_ACTION_LOG)),
                                       state=rng.randrange(len(_abi.TCP_STATES)),
                                       ifindex=rng.choice((3, 4, 1000)))
            pairs.append((key, value))
        dp.maps.update_many("session_map", pairs)
        yield dp
    finally:
        dp.close()


def _reference_summary(pinned):
    by_protocol = collections.Counter()
    by_state = collections.Counter()
    by_action = collections.Counter()
    for key, value in pinned.items("session_map"):
        by_protocol[_abi.PROTOCOL_NAMES.get(key.protocol, str(key.protocol))] += 1
        if key.protocol == _sessions.TCP:
            by_state[_abi.TCP_STATES[value.state]] += 1
        by_action[_abi.ACTION_NAMES[value.action]] += 1
    return {"by_protocol": dict(by_protocol), "tcp_states": dict(by_state),
            "by_action": dict(by_action), "total": sum(by_protocol.values())}


def test_summary_matches_the_map_read_entry_by_entry(loaded):
    summary = _sessions.summarize(loaded.maps)
    assert summary == _reference_summary(loaded.maps)
    assert summary["total"] == SESSIONS
    assert set(summary["by_protocol"]) == {"tcp", "udp", "icmp", "47"}


def test_count_reads_the_kernel_map(loaded):
    assert loaded.maps.count("session_map") == SESSIONS
    assert loaded.maps.count("policy_map") == 0


def test_facts_report_the_session_map_fill_from_the_same_pass(loaded):
    ipr = _netlink.open_route()
    try:
        facts = _facts.gather(loaded.pin_path, ipr)
    finally:
        ipr.close()
    session_map = facts["maps"]["session_map"]
    assert session_map["entries"] == facts["sessions"]["total"] == SESSIONS
    assert session_map["fill_percent"] == round(100.0 * SESSIONS / session_map["max_entries"], 2)
    assert facts["sessions"]["by_action"] == _reference_summary(loaded.maps)["by_action"]


def test_expiry_scan_matches_the_map_read_entry_by_entry(loaded):
    # last_seen is spread over 0-1,100 s before "now": some of every class are expired.
    now_ns = 1 << 40
    timeouts = _sessions.timeouts_ns({})
    expired = collections.Counter()
    syn_sent = 0
    by_endpoint = collections.defaultdict(lambda: [0, 0])
    for key, value in loaded.maps.items("session_map"):
        klass = _sessions.timeout_class(key.protocol, value.state)
        by_endpoint[value.ifindex][0] += 1
        if now_ns - value.last_seen > timeouts[klass]:
            expired[klass] += 1
        elif key.protocol == _sessions.TCP and value.state == _sessions.SYN_SENT:
            syn_sent += 1
            by_endpoint[value.ifindex][1] += 1
    result = _sessions.sweep(loaded.maps, now_ns, timeouts, delete=False)
    assert result == {"total": SESSIONS, "syn_sent": syn_sent, "expired": sum(expired.values()),
                      "expired_by_class": dict(expired), "by_endpoint": dict(by_endpoint)}
    assert len(by_endpoint) > 1
    assert 0 < sum(expired.values()) < SESSIONS and syn_sent > 0
    assert loaded.maps.count("session_map") == SESSIONS     # delete=False deleted nothing

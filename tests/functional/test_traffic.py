# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real packets between container namespaces on a bridge, filtered by the real program.

Entries are written straight into the pinned maps here; the rule compiler has its own tests.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import subprocess
import sys
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.netlab import PROBE, Lab
from ansible_collections.ebpf.microseg.tests.harness.pair_rules import allow_pair

TCP, UDP, ICMP = 6, 17, 1
DENY_BOTH = {"egress": "deny", "ingress": "deny"}


@pytest.fixture(scope="module")
def attached():
    """A three-container lab with the program on both hooks of every host-side veth."""
    lab = Lab()
    dp = None
    try:
        dp = Datapath(sizes={"session_map_size": 8192})
        lab.attach(dp.fds, dp.pin_path)
        lab.wait_links()
        for ctr in lab.containers.values():
            ctr.serve("tcp", 5432)
            ctr.serve("tcp", 8080)
            ctr.serve("udp", 5353)
        yield lab, dp
    finally:
        lab.destroy()
        if dp:
            dp.close()


@pytest.fixture
def net(attached):
    lab, dp = attached
    dp.reset()
    return lab, dp


def test_default_allow_passes_tcp_udp_icmp(net):
    lab, dp = net
    a, b = lab["a"], lab["b"]
    assert a.probe("tcp", b.address, 5432) == "ok"
    assert a.probe("udp", b.address, 5353) == "ok"
    assert a.probe("icmp", b.address) == "ok"
    stats = dp.stats()
    assert stats["allowed_packets"] > 0 and stats["denied_packets"] == 0
    protos = set(k.protocol for k, _v in dp.sessions())
    assert {TCP, UDP, ICMP} <= protos


def test_default_deny_blocks_tcp_udp_icmp(net):
    lab, dp = net
    dp.set_config(default_action=DENY_BOTH)
    a, b = lab["a"], lab["b"]
    assert a.probe("tcp", b.address, 5432, 0.5) == "fail"
    assert a.probe("udp", b.address, 5353, 0.5) == "fail"
    assert a.probe("icmp", b.address, 0.5) == "fail"
    assert dp.stats()["denied_packets"] >= 3


def test_allow_rule_opens_exactly_one_port_one_way(net):
    lab, dp = net
    dp.set_config(default_action=DENY_BOTH)
    a, b, c = lab["a"], lab["b"], lab["c"]
    allow_pair(dp, a, b, 5432)
    assert a.probe("tcp", b.address, 5432) == "ok"          # the allowed flow, replies included
    assert a.probe("tcp", b.address, 8080, 0.5) == "fail"   # other port
    assert b.probe("tcp", a.address, 5432, 0.5) == "fail"   # other direction
    assert c.probe("tcp", b.address, 5432, 0.5) == "fail"   # other client
    assert a.probe("udp", b.address, 5353, 0.5) == "fail"   # other protocol
    established = [v for k, v in dp.sessions() if k.protocol == TCP and v.action == 0]
    assert established, "the allowed TCP flow left no allowed session"
    assert dp.rule_hits(5432) == 2   # decided once at each end


def test_udp_and_icmp_allowed_by_rule(net):
    lab, dp = net
    dp.set_config(default_action=DENY_BOTH)
    a, b = lab["a"], lab["b"]
    allow_pair(dp, a, b, 5353, UDP)
    allow_pair(dp, a, b, 0, ICMP)
    assert a.probe("udp", b.address, 5353) == "ok"
    assert a.probe("icmp", b.address) == "ok"
    assert b.probe("icmp", a.address, 0.5) == "fail"


def test_fragmented_udp_is_delivered_when_allowed(net):
    """4000-byte datagrams over a 1500 MTU travel as IPv4 fragments."""
    lab, dp = net
    dp.set_config(default_action=DENY_BOTH)
    a, b = lab["a"], lab["b"]
    allow_pair(dp, a, b, 5353, UDP)
    assert a.probe("udpbig", b.address, 5353) == "ok"
    assert dp.stats()["fragments"] >= 4
    assert dp.stats()["fragment_drops"] == 0


def test_new_generation_cuts_an_established_connection(net):
    lab, dp = net
    a, b = lab["a"], lab["b"]
    client = subprocess.Popen(["ip", "netns", "exec", a.netns, sys.executable, PROBE, "hold",
                               b.address, "8080", "1.0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert client.stdout.readline().strip() == "connected"
        client.stdin.write("one\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "ok"
        # Deny a -> b:8080 in the inactive policy set, then flip the epoch.
        inactive = dp.policy_set ^ 1
        dp.add_remote_cidr(b.address + "/32", "egress", "deny", policy_id=99,
                           policy_set=inactive)
        dp.bump_epoch()
        client.stdin.write("two\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "fail"
        assert dp.stats()["reevaluations"] >= 1
        assert a.probe("tcp", b.address, 5432, 0.5) == "fail"    # new flows too
        assert b.probe("tcp", a.address, 5432) == "ok"           # the other way is untouched
    finally:
        if client.poll() is None:
            client.kill()
        client.wait()
        client.stdin.close()
        client.stdout.close()


def test_sessions_read_back_from_kernel_match_real_flows(net):
    lab, dp = net
    a, b = lab["a"], lab["b"]
    assert a.probe("tcp", b.address, 5432) == "ok"
    time.sleep(0.2)
    seen = {}
    for key, value in dp.sessions():
        if key.protocol == TCP and key.dst_port == 5432:
            seen[_maps.u32_to_ip(key.src_ip)] = value
    # a's program keys the flow a-first, b's program b-first (remote port 5432 vs local).
    assert a.address in seen
    assert _abi.TCP_STATES[seen[a.address].state] in ("TIME_WAIT", "CLOSE", "FIN_WAIT2",
                                                      "CLOSE_WAIT", "LAST_ACK")

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The flows the MS_BENCH build names (bench_next_flow in files/bpf/microseg.bpf.c) and
their runs: bench/run.py measures new flows with them, tests/functional/test_bench_stream.py
checks that the C side and this side name the same flows."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import os
import socket
import struct
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness import bpf_syscall_extra as bpfx
from ansible_collections.ebpf.microseg.tests.harness import packets as P

C = "198.18.1.10"
UDP = 17


class FlowStream:
    """Flow i of the MS_BENCH entry points: UDP from C:sport_base + i // dst_count to
    dst_base + i % dst_count, port dport (the C side computes the same in bench_next_flow)."""

    def __init__(self, dst_base, dst_count, sport_base, dport):
        self.dst_base = struct.unpack("!I", socket.inet_aton(dst_base))[0]   # host order
        self.dst_count, self.sport_base, self.dport = dst_count, sport_base, dport

    def flow_numbers(self, i):
        """(destination as a host-order number, source port) of flow i."""
        return self.dst_base + i % self.dst_count, self.sport_base + i // self.dst_count

    def flow(self, i):
        dst, sport = self.flow_numbers(i)
        return socket.inet_ntoa(struct.pack("!I", dst)), sport

    def frame(self, i=0):
        dst, sport = self.flow(i)
        return P.udp_frame(C, dst, sport, self.dport)

    def session_keys(self, count):
        key = _maps.SessionKey(src_ip=_maps.ip_to_u32(C), dst_port=self.dport, protocol=UDP)
        out = []
        for i in range(count):
            dst, key.src_port = self.flow_numbers(i)
            key.dst_ip = struct.unpack("=I", struct.pack("!I", dst))[0]
            out.append(key.pack())
        return out


# The three new-flow paths, in address space no other bench entry touches.
EXACT_STREAM = FlowStream("198.18.128.0", 25000, 20000, 5432)   # one exact rule per flow
CIDR_STREAM = FlowStream("198.18.64.0", 16384, 30000, 53)       # inside 198.18.64.0/18
DEFAULT_STREAM = FlowStream("198.18.232.0", 4096, 1024, 9)      # matches no rule


def streamed_run(dp, fd, stream, flows, rounds, forget=True):
    """One PROG_TEST_RUN of repeat=flows per round, each repetition a new flow of stream."""
    slots = bpf.obj_get(os.path.join(dp.pin_path, "bench_flow_map"))
    keys = stream.session_keys(flows) if forget else []
    out = []
    try:
        for _round in range(rounds):
            for index, value in enumerate((0, stream.dst_base, stream.dst_count,
                                           stream.sport_base)):
                bpf.map_update(slots, struct.pack("=I", index), struct.pack("=I", value))
            reset_pressure(dp)
            _ret, _data, duration = bpfx.prog_test_run(fd, stream.frame(), repeat=flows)
            out.append(float(duration))
            if keys:
                bpf.map_delete_batch(dp.maps.fd("session_map"), keys,
                                     ctypes.sizeof(_maps.SessionKey))
    finally:
        bpf.close(slots)
    return out


def reset_pressure(dp):
    """Pressure as the monitor would have left it: the live count, nothing else."""
    live = getattr(dp, "live_sessions", 0)
    dp.maps.write_pressure(_maps.MapPressure(total_sessions=live, last_check=time.monotonic_ns()))


def load_exact_rules(dp, count):
    pairs = []
    for i in range(count):
        dst, sport = EXACT_STREAM.flow(i)
        key = _maps.PolicyKey(src_ip=_maps.ip_to_u32(C), dst_ip=_maps.ip_to_u32(dst),
                              src_port=sport, dst_port=EXACT_STREAM.dport, protocol=UDP,
                              direction=0, policy_set=dp.policy_set)
        pairs.append((key, _maps.PolicyValue(policy_id=1000 + i, action=0)))
    dp.maps.update_many("policy_map", pairs)

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A denied flood, two ways of holding a verdict (docs/architecture.md section 2, issue 12).

shipped:      a denied first packet creates no session; every denied packet is decided.
alternative:  a deny entry per denied flow (compiled with -DMS_CACHE_DENIED_FLOWS), keyed
              so that only its initiator's side hits it: repeats of one denied flow are
              session hits, but a flood of distinct flows fills the session map.

Each is measured with PROG_TEST_RUN on one CPU: a stream of FLOWS distinct denied flows
(ns per packet above the stream floor, and the session-map entries it leaves), and one
denied flow repeated (ns per packet above the empty program).

Run alone: `make bench-flood` (also part of `make bench`).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import statistics
import sys

from ansible_collections.ebpf.microseg.bench.run import fmt, median_spread, repeat_run, table
from ansible_collections.ebpf.microseg.tests.harness import packets as P
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.flow_stream import DEFAULT_STREAM, streamed_run

FLOWS = 100000
DENY_BOTH = {"egress": "deny", "ingress": "deny"}
VARIANTS = (("no session for a denied packet (shipped)", ()),
            ("deny entry per flow (alternative)", ("MS_CACHE_DENIED_FLOWS",)))


def rows(rounds=5, repeat=1000000):
    out = []
    for name, extra in VARIANTS:
        dp = Datapath(sizes={"session_map_size": 262144, "policy_map_size": 4096,
                             "range_map_size": 1024, "rule_stats_size": 4096},
                      functions=["microseg_from_container", "microseg_noop",
                                 "microseg_bench_new_flow", "microseg_bench_floor"],
                      defines=("MS_BENCH",) + extra)
        try:
            dp.reset(default_action=DENY_BOTH)
            floor = streamed_run(dp, dp.fds["microseg_bench_floor"], DEFAULT_STREAM, FLOWS,
                                 rounds, forget=False)
            flood = []
            left = 0
            for _round in range(rounds):
                dp.maps.clear("session_map")
                dp.maps.reset_stats()
                flood += streamed_run(dp, dp.fds["microseg_bench_new_flow"], DEFAULT_STREAM,
                                      FLOWS, 1, forget=False)
                left = dp.maps.count("session_map")
                denied = dp.stats()["denied_packets"]
            frame = P.udp_frame("198.18.1.10", "198.18.2.1", 40000, 9)
            dp.maps.clear("session_map")
            dp.egress(frame)
            empty = repeat_run(dp, dp.fds["microseg_noop"], frame, repeat, rounds)
            same = repeat_run(dp, dp.fds["microseg_from_container"], frame, repeat, rounds)
        finally:
            dp.close()
        base = statistics.median(floor)
        med, spread = fmt(median_spread([v - base for v in flood]))
        same_med, same_spread = fmt(median_spread([v - statistics.median(empty) for v in same]))
        out.append((name, med, spread, "{:,}".format(denied), "{:,}".format(left),
                    same_med, same_spread))
    return out


HEADERS = ("variant", "flood ns/pkt", "spread", "packets denied", "sessions left",
           "one flow repeated ns/pkt", "spread")


def main():
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cpus)})
    try:
        print("## A denied flood of %s distinct flows (PROG_TEST_RUN, one CPU)\n" %
              "{:,}".format(FLOWS))
        print(table(HEADERS, rows()))
    finally:
        os.sched_setaffinity(0, all_cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())

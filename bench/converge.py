# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_policy converge time at 100,000 exact + 10,000 CIDR rules.

Calls the module's own code path (plugins/module_utils/_policy.run) on a real pinned
program; `--ansible` also pushes the same policy through ansible-playbook.

`--random-names` converges 100,000 and 200,000 exact rules with random names instead (the
policies of issue 17, where crc32 ids collided; tests/harness/policy_scale.py, which
tests/functional/test_policy_scale.py runs too).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import cProfile
import os
import pstats
import sys
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.tests.harness import policy_scale
from ansible_collections.ebpf.microseg.tests.harness.datapath import BPF_DIR, new_pin_path

SIZES = {"policy_map_size": 250000, "range_map_size": 262144, "session_map_size": 65536,
         "frag_map_size": 1024, "rule_stats_size": 262144, "endpoint_map_size": 64,
         "log_ring_pages": 4}


def exact_rules(count, variant=0):
    return [{"name": "exact-%d" % i, "direction": "egress",
             "src": "198.19.%d.%d/32" % (i >> 8 & 255, i & 255),
             "dst": "198.18.%d.%d/32" % ((i >> 16) + 100, i >> 8 & 255),
             "protocol": "tcp", "src_ports": [1024 + i % 60000], "dst_ports": [443 + variant],
             "action": "allow"} for i in range(count)]


def cidr_rules(count, variant=0):
    return [{"name": "cidr-%d" % i, "direction": "both",
             "dst": "198.%d.%d.%d/29" % (18 + (i >> 13), i >> 5 & 255, (i & 31) << 3),
             "protocol": "tcp" if i % 2 else "udp", "dst_ports": [53 + variant, "8000-8080"],
             "action": "deny" if i % 3 == 0 else "allow"} for i in range(count)]


def run(pin, rules, default_action=None):
    params = {"rules": rules, "segments": None, "state": "overridden", "pin_path": pin,
              "default_action": default_action or {"egress": "deny", "ingress": "deny"}}
    started = time.time()
    result = _policy.run(params, False, False)
    return time.time() - started, result


def converge_rows(exact=100000, cidr=10000, profile=False):
    pin = new_pin_path("conv")
    os.makedirs(pin)
    fds = {}
    rows = []
    try:
        fds, _seconds = _loader.compile_and_load(_loader.read_sources(BPF_DIR), pin, SIZES,
                                                 _kernel_headers.find_kernel_headers())
        base = exact_rules(exact) + cidr_rules(cidr)
        seconds, result = run(pin, base)
        rows.append(("first run (%d exact + %d CIDR)" % (exact, cidr), "%.2f" % seconds,
                     sum(v["entries"] for v in result["entry_changes"].values()),
                     result["changed"]))
        seconds, result = run(pin, base)
        rows.append(("identical re-run", "%.2f" % seconds, 0, result["changed"]))
        changed = list(base)
        step = 100
        for i in range(0, len(changed), step):   # 1% of the rules change their ports
            rule = dict(changed[i])
            rule["dst_ports"] = [444] if rule["name"].startswith("exact") else [54, "8000-8080"]
            changed[i] = rule
        if profile:
            prof = cProfile.Profile()
            prof.enable()
        seconds, result = run(pin, changed)
        if profile:
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(18)
        moved = sum(v["added"] + v["removed"] + v["changed"]
                    for v in result["entry_changes"].values())
        rows.append(("1% of rules changed", "%.2f" % seconds, moved, result["changed"]))
    finally:
        for fd in fds.values():
            os.close(fd)
        _loader.remove_pins(pin)
    return rows


def random_name_rows(counts=(100000, 200000)):
    rows = []
    for count in counts:
        rows.extend(policy_scale.random_name_rows(count, dict(SIZES, range_map_size=8192)))
    return rows


if __name__ == "__main__":
    if "--random-names" in sys.argv:
        for row in random_name_rows():
            print(row)
    else:
        for row in converge_rows(profile="--profile" in sys.argv):
            print(row)

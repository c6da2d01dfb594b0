# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_explain latency against a 10,000-rule policy: one flow and 100 flows.

A real pinned program (compiled, not attached), the policy converged through the module code
path (_policy.run, the CIDR rules of bench/converge.py), then _explain.run - what the module
runs: read the stored source, normalize it, the model and the kernel lookups per flow and
direction - and its parts, and `ansible localhost -m ebpf.microseg.microseg_explain` wall
time (ansible's start-up included).

Run alone: `make bench-explain` (also part of `make bench`).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import random
import time

from ansible_collections.ebpf.microseg.bench.converge import cidr_rules
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _explain
from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_adhoc
from ansible_collections.ebpf.microseg.tests.harness.datapath import BPF_DIR, new_pin_path

RULES = 10000
SIZES = {"policy_map_size": 4096, "range_map_size": 262144, "session_map_size": 4096,
         "frag_map_size": 1024, "rule_stats_size": 16384, "endpoint_map_size": 64,
         "log_ring_pages": 4}
HEADERS = ("what", "flows", "seconds (median, min-max)", "per flow direction, ms")


def flows(count, seed=17):
    """Flows into the rules' CIDRs, on their ports and next to them, both directions."""
    rng = random.Random(seed)
    out = []
    for _index in range(count):
        i = rng.randrange(RULES)
        dst = "198.%d.%d.%d" % (18 + (i >> 13), i >> 5 & 255, ((i & 31) << 3) + rng.randrange(8))
        protocol = rng.choice(["tcp", "udp"])
        out.append({"src": "198.18.200.%d" % rng.randrange(1, 255), "dst": dst,
                    "protocol": protocol, "dst_port": rng.choice([53, 8000, 8080, 443]),
                    "src_port": rng.randrange(1024, 65536)})
    return out


def _timed(rounds, call):
    times = []
    for _round in range(rounds):
        started = time.time()
        call()
        times.append(time.time() - started)
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def _row(name, count, timing, directions=2):
    med, low, high = timing
    return (name, count, "%.3f (%.3f-%.3f)" % (med, low, high),
            "%.2f" % (med * 1000.0 / (count * directions)) if count else "-")


def rows(rounds=5, adhoc_rounds=3):
    pin = new_pin_path("explain")
    os.makedirs(pin)
    fds = {}
    out = []
    try:
        fds, _seconds = _loader.compile_and_load(_loader.read_sources(BPF_DIR), pin, SIZES,
                                                 _kernel_headers.find_kernel_headers())
        result = _policy.run({"rules": cidr_rules(RULES), "segments": None,
                              "state": "overridden", "pin_path": pin,
                              "default_action": {"egress": "deny", "ingress": "deny"}},
                             False, False)
        assert result["changed"], result
        one, hundred = flows(1), flows(100)
        for count, batch in ((1, one), (100, hundred)):
            answer = _explain.run(pin, batch)
            assert answer["agree"] and answer["rules"] == RULES, answer["disagreements"][:3]
            out.append(_row("_explain.run (module code path)", count,
                            _timed(rounds, lambda batch=batch: _explain.run(pin, batch))))
        # The parts of one run.
        with _maps.PinnedMaps(pin, names=list(_converge.POLICY_MAPS) + ["config_map"]) as pinned:
            config = pinned.config()
            active = config.policy_epoch & 1
            kernel_default = _explain.kernel_default_actions(config)
            out.append(_row("  read the stored source", 0,
                            _timed(rounds, lambda: _converge.read_source(pin, active))))
            source = _converge.read_source(pin, active)
            out.append(_row("  normalize it (%d rules)" % RULES, 0, _timed(
                rounds, lambda: _explain.model_policy(source, kernel_default))))
            policy = _explain.model_policy(source, kernel_default)
            parsed = _explain.parse_flows(hundred)
            out.append(_row("  the model (candidates over every rule)", 100, _timed(
                rounds, lambda: _explain.explain_flows(policy, parsed))))
            by_id = dict((rule.policy_id, rule.name) for rule in policy.rules)

            def kernel_only():
                for flow in parsed:
                    for _direction, packet in _explain.packets(flow):
                        _explain.kernel_answer(pinned, active, kernel_default, by_id, packet)
            out.append(_row("  the kernel lookups (bpf syscalls)", 100,
                            _timed(rounds, kernel_only)))
        for count, batch in ((1, one), (100, hundred)):
            args = json.dumps({"pin_path": pin, "flows": batch})

            def adhoc(args=args):
                res = run_adhoc("ebpf.microseg.microseg_explain", args)
                assert res.rc == 0 and res.task()["agree"], res.stdout[-2000:]
            out.append(_row("ansible -m microseg_explain (ad hoc, wall)", count,
                            _timed(adhoc_rounds, adhoc)))
    finally:
        for fd in fds.values():
            os.close(fd)
        _loader.remove_pins(pin)
    return out


if __name__ == "__main__":
    from ansible_collections.ebpf.microseg.bench.run import table
    print("## microseg_explain against %s rules, seconds\n" % "{:,}".format(RULES))
    print(table(HEADERS, rows()))

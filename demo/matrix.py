# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measure the allow/deny matrix of the demo lab with real connections.

Each cell is one real TCP connect / UDP exchange / ICMP echo from one namespace to
another, through the bridge and both microseg programs. With --policy, the expected
verdict from the reference model (plugins/module_utils/_verdict.py) is shown beside it.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(os.path.dirname(HERE), "tests", "functional", "netprobe.py")
HOSTS = {"web": "198.18.200.10", "db": "198.18.200.20", "other": "198.18.200.30"}
SERVICES = [("tcp", 5432), ("tcp", 80), ("udp", 53), ("icmp", 0)]


def probe(src, dst, proto, port):
    cmd = ["ip", "netns", "exec", "msd-" + src, sys.executable, PROBE, proto, HOSTS[dst]]
    if proto != "icmp":
        cmd.append(str(port))
    cmd.append("0.7")
    out = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True,
                         check=False).stdout.strip()
    return out == "ok"


def expected(policy, src, dst, proto, port):
    """The verdict the model gives: a flow passes when egress at src and ingress at dst allow."""
    try:
        from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model, _verdict
    except ImportError:
        return None
    norm = _policy_model.normalize(policy["rules"], policy.get("segments", {}),
                                   policy["default_action"])
    number = {"tcp": 6, "udp": 17, "icmp": 1}[proto]
    out = _verdict.verdict(norm, "egress", HOSTS[src], HOSTS[dst], number, 40000, port)
    into = _verdict.verdict(norm, "ingress", HOSTS[src], HOSTS[dst], number, 40000, port)
    return out[0] != "deny" and into[0] != "deny"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", help="JSON file with rules, segments, default_action")
    args = parser.parse_args()
    policy = None
    if args.policy:
        with open(args.policy) as handle:
            policy = json.load(handle)
    print("%-6s -> %-6s %-9s %-8s %s" % ("from", "to", "service", "measured", "expected"))
    mismatches = 0
    for src in HOSTS:
        for dst in HOSTS:
            if src == dst:
                continue
            for proto, port in SERVICES:
                got = probe(src, dst, proto, port)
                want = expected(policy, src, dst, proto, port) if policy else None
                label = "%s/%d" % (proto, port) if port else proto
                mark = ""
                if want is not None:
                    mark = "ALLOW" if want else "DENY"
                    if want != got:
                        mark += "  <-- MISMATCH"
                        mismatches += 1
                measured = "ALLOW" if got else "DENY"
                print("%-6s -> %-6s %-9s %-8s %s" % (src, dst, label, measured, mark))
    if mismatches:
        print("%d cells differ from the model" % mismatches)
        sys.exit(1)


if __name__ == "__main__":
    main()

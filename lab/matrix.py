#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab fleet's allow/deny matrix, measured with real connections across hosts.

Starts echo servers (tcp/5432, tcp/80, udp/53) in every container, then from every
container probes every other container on every service, in parallel inside the source
container. Each flow crosses the source host's program (egress) and the destination host's
(ingress), possibly over the management network. With --policies DIR (one <host>.json per
host, as `microseg_policy state=gathered` returns it), each cell is compared with the
reference model: a flow passes when the source host's policy allows its egress and the
destination host's allows its ingress. Exit status 1 when any cell differs.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLEET = os.path.join(HERE, "fleet.py")
VM = os.path.join(HERE, "vm.py")
PROBE = os.path.join(ROOT, "tests", "harness", "netprobe.py")
# In a VM guest's podman containers (lab/vm.py): the probe is mounted at /netprobe.py and
# each container already serves every service from its start.
VM_PROBE = "/netprobe.py"
SERVICES = [("tcp", 5432), ("tcp", 80), ("udp", 53), ("icmp", 0)]

# Runs inside one source container: every target and service at once, one JSON line out.
PROBE_ALL = r"""
import json, sys, threading
sys.path.insert(0, %(probe_dir)r)
import netprobe
targets = json.loads(sys.argv[1])
timeout = float(sys.argv[2])
results = {}
def run(index, proto, address, port):
    if proto == "tcp":
        ok = netprobe.tcp(address, port, timeout)
    elif proto == "udp":
        ok = netprobe.udp(address, port, timeout)
    else:
        ok = netprobe.icmp(address, timeout)
    results[index] = ok
threads = [threading.Thread(target=run, args=(i,) + tuple(t)) for i, t in enumerate(targets)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps([results[i] for i in range(len(targets))]))
"""


def load_inventory(path):
    import yaml   # ansible's own dependency
    with open(path) as handle:
        data = yaml.safe_load(handle)
    hosts = data["all"]["children"]["microseg_hosts"]["hosts"] if "all" in data else \
        data["microseg_hosts"]["hosts"]
    containers = []
    for host in sorted(hosts, key=lambda h: hosts[h].get("lab_index", 0)):
        for ctr in hosts[host].get("bridge_veth_containers", []) + \
                hosts[host].get("vm_containers", []):
            containers.append({"host": host, "name": ctr["name"],
                               "address": ctr["address"].split("/")[0]})
    return containers


def fleet_cmd(state_dir, host, container, argv, platform="lab"):
    cmd = [sys.executable, VM if platform == "vm" else FLEET]
    if state_dir:
        cmd += ["--state-dir", state_dir]
    cmd += ["exec", host]
    if container:
        cmd += ["--container", container]
    return cmd + ["--"] + argv


def start_servers(containers, state_dir):
    procs = []
    for ctr in containers:
        for proto, port in SERVICES:
            if proto == "icmp":
                continue
            proc = subprocess.Popen(
                fleet_cmd(state_dir, ctr["host"], ctr["name"],
                          ["/usr/bin/python3", PROBE, "serve", proto, str(port)]),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                start_new_session=True)
            procs.append(proc)
    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "listening":
            stop_servers(procs)
            raise SystemExit("a probe server did not start (%r)" % line)
    return procs


def stop_servers(procs):
    for proc in procs:
        if proc.poll() is None:
            # The server and the exec wrapper share a new session: signal the group.
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def expected_verdicts(policies_dir, containers):
    try:
        from ansible_collections.ebpf.microseg.plugins.module_utils import _abi, _policy_model, _verdict
    except ImportError:
        return None
    models = {}
    for host in set(c["host"] for c in containers):
        with open(os.path.join(policies_dir, host + ".json")) as handle:
            doc = json.load(handle)
        models[host] = _policy_model.normalize(doc.get("rules", []), doc.get("segments", {}),
                                               doc["default_action"], tiers=doc.get("tiers"))

    def expect(src, dst, proto, port):
        number = _abi.PROTOCOLS[proto]
        out = _verdict.verdict(models[src["host"]], "egress", src["address"], dst["address"],
                               number, 40000, port)
        into = _verdict.verdict(models[dst["host"]], "ingress", src["address"], dst["address"],
                                number, 40000, port)
        return out[0] != "deny" and into[0] != "deny"
    return expect


def measure(containers, state_dir, timeout, platform="lab"):
    cells = {}
    probe = VM_PROBE if platform == "vm" else PROBE
    for src in containers:
        targets = [(proto, dst["address"], port) for dst in containers if dst is not src
                   for proto, port in SERVICES]
        script = PROBE_ALL % {"probe_dir": os.path.dirname(probe)}
        out = subprocess.run(fleet_cmd(state_dir, src["host"], src["name"],
                                       ["/usr/bin/python3", "-c", script, json.dumps(targets),
                                        str(timeout)], platform),
                             stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        results = iter(json.loads(out.strip().splitlines()[-1]))
        for dst in containers:
            if dst is src:
                continue
            for proto, port in SERVICES:
                cells[(src["host"], src["name"], dst["host"], dst["name"], proto, port)] = \
                    next(results)
    return cells


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", default=os.path.join(HERE, "inventory", "hosts.yml"))
    parser.add_argument("--state-dir", help="fleet.py (vm.py) --state-dir, if not the default")
    parser.add_argument("--platform", choices=("lab", "vm"), default="lab",
                        help="lab: lab/fleet.py namespaces; vm: lab/vm.py guests' podman "
                             "containers (their servers run from the containers' start)")
    parser.add_argument("--policies", help="directory of <host>.json gathered policies")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--json", help="also write the cells here")
    args = parser.parse_args()

    containers = load_inventory(args.inventory)
    expect = expected_verdicts(args.policies, containers) if args.policies else None
    started = time.time()
    servers = start_servers(containers, args.state_dir) if args.platform == "lab" else []
    try:
        cells = measure(containers, args.state_dir, args.timeout, args.platform)
    finally:
        stop_servers(servers)
    header = "%-10s -> %-10s " % ("from", "to") + " ".join("%-9s" % (
        "%s/%d" % (p, port) if port else p) for p, port in SERVICES)
    print(header)
    mismatches = 0
    allowed = 0
    for src in containers:
        for dst in containers:
            if dst is src:
                continue
            marks = []
            for proto, port in SERVICES:
                got = cells[(src["host"], src["name"], dst["host"], dst["name"], proto, port)]
                allowed += got
                mark = "allow" if got else "-"
                if expect is not None and expect(src, dst, proto, port) != got:
                    mark += "(!)"
                    mismatches += 1
                marks.append("%-9s" % mark)
            print("%-10s -> %-10s " % ("%s/%s" % (src["host"], src["name"]),
                                       "%s/%s" % (dst["host"], dst["name"])) + " ".join(marks))
    total = len(cells)
    print("%d cells measured in %.1f s: %d allowed, %d denied%s"
          % (total, time.time() - started, allowed, total - allowed,
             "" if expect is None else "; %d differ from the reference model" % mismatches))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([dict(zip(("src_host", "src", "dst_host", "dst", "proto", "port"), key),
                            allowed=value) for key, value in sorted(cells.items())], handle)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()

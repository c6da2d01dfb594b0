# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""make bench: data plane cost per packet (BPF_PROG_TEST_RUN) and control plane wall times.

Prints one table per section and writes bench/results.md. Nothing here is a pass/fail test.
Run as root from the checkout: `make bench` (sets PYTHONPATH to the collection layout).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import struct
import sys
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.functional import packets as P
from ansible_collections.ebpf.microseg.tests.functional.datapath import Datapath

HERE = os.path.dirname(os.path.abspath(__file__))
C = "198.18.1.10"
UDP = 17


def median_spread(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


def fmt(ns_triplet):
    med, low, high = ns_triplet
    return "%.1f" % med, "%.1f-%.1f" % (low, high)


def repeat_run(dp, fd, frame, repeat, rounds):
    out = []
    for _round in range(rounds):
        _ret, _data, duration = bpf.prog_test_run(fd, frame, repeat=repeat)
        out.append(float(duration))
    return out


def new_flow_run(dp, fd, frames, rounds):
    """Each frame once (repeat=1): every run is the first packet of a new flow."""
    keys = [_session_key_of(frame) for frame in frames]
    out = []
    for _round in range(rounds):
        # Forget only the probe flows: a loaded session map must stay loaded.
        bpf.map_delete_batch(dp.maps.fd("session_map"), [k.pack() for k in keys],
                             ctypes.sizeof(_maps.SessionKey))
        dp.maps.write_pressure(_maps.MapPressure())
        total = 0
        for frame in frames:
            _ret, _data, duration = bpf.prog_test_run(fd, frame, repeat=1)
            total += duration
        out.append(total / float(len(frames)))
    return out


def _session_key_of(frame):
    """Session key of an egress UDP frame built by packets.udp_frame (no IP options)."""
    return _maps.SessionKey(src_ip=struct.unpack("=I", frame[26:30])[0],
                            dst_ip=struct.unpack("=I", frame[30:34])[0],
                            src_port=struct.unpack("!H", frame[34:36])[0],
                            dst_port=struct.unpack("!H", frame[36:38])[0], protocol=UDP)


def remote_for(i):
    return "198.%d.%d.%d" % (18 + (i >> 16 & 1), (i >> 8) & 0xff, i & 0xff)


def load_full_maps(dp, exact_rules, cidr_rules, sessions, policy_set):
    """100k exact rules, 10k CIDR rules and 1M sessions, none matching the probe flows."""
    rng = random.Random(7)
    pairs = []
    for i in range(exact_rules):
        key = _maps.PolicyKey(src_ip=_maps.ip_to_u32("198.19.%d.%d" % (i >> 8 & 0xff, i & 0xff)),
                              dst_ip=_maps.ip_to_u32("198.19.250.%d" % (i % 250)),
                              src_port=1024 + (i % 60000), dst_port=443, protocol=6,
                              direction=0, policy_set=policy_set)
        pairs.append((key, _maps.PolicyValue(policy_id=i + 1, action=0)))
    dp.maps.update_many("policy_map", pairs)
    pairs = []
    for i in range(cidr_rules):
        key = _maps.LpmKey(prefixlen=32 + 28, class_id=(policy_set << 1),
                           ip=_maps.ip_to_u32("198.19.%d.%d" % ((i >> 4) & 0xff, (i & 0xf) << 4)))
        pairs.append((key, _maps.RangeValue(policy_id=200000 + i, action=0,
                                            flags=_maps.RANGE_FLAG_FINAL)))
    dp.maps.update_many("ip_range_map", pairs)
    pairs = []
    for i in range(sessions):
        key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.19.%d.%d" % (rng.randrange(256), rng.randrange(256))),
                               dst_ip=_maps.ip_to_u32("198.18.%d.%d" % (i >> 8 & 0xff, i & 0xff)),
                               src_port=i & 0xffff, dst_port=(i >> 16) + 1, protocol=UDP)
        pairs.append((key, _maps.SessionValue(packets=1)))
        if len(pairs) >= 100000:
            dp.maps.update_many("session_map", pairs)
            pairs = []
    if pairs:
        dp.maps.update_many("session_map", pairs)


def datapath_section(args):
    sizes = {"policy_map_size": 100000 * 2, "range_map_size": 10000 * 2,
             "session_map_size": 1000000 * 2 if args.full else 1000000,
             "rule_stats_size": 262144}
    dp = Datapath(sizes=sizes, functions=list(_loader.PROGRAMS) + ["microseg_noop"])
    rows = []
    try:
        egress = dp.fds["microseg_from_container"]
        noop = dp.fds["microseg_noop"]
        flows = args.flows
        for loaded in ([False, True] if args.full else [False]):
            dp.reset()
            state = "full maps" if loaded else "empty maps"
            if loaded:
                started = time.time()
                load_full_maps(dp, 100000, 10000, 1000000, dp.policy_set)
                print("  loaded 100k exact, 10k CIDR, 1M sessions in %.1f s"
                      % (time.time() - started), file=sys.stderr)
                dp.maps.update("config_map", _maps.U32(0), _fresh_config(dp))
            # Rules the probe flows hit.
            dp.add_exact(C, "198.18.2.1", 40000, 5432, UDP, "egress", "allow", policy_id=7)
            for i in range(flows):
                dp.add_exact(C, remote_for(i), 20000 + (i % 20000), 5432, UDP, "egress", "allow",
                             policy_id=8)
            dp.add_remote_cidr("198.18.64.0/18", "egress", "allow", policy_id=9)

            frame = P.udp_frame(C, "198.18.2.1", 40000, 5432)
            dp.egress(frame)   # creates the session
            empty = repeat_run(dp, noop, frame, args.repeat, args.rounds)
            hit = repeat_run(dp, egress, frame, args.repeat, args.rounds)
            exact_frames = [P.udp_frame(C, remote_for(i), 20000 + (i % 20000), 5432)
                            for i in range(flows)]
            cidr_frames = [P.udp_frame(C, "198.18.%d.%d" % (64 + (i >> 8) % 64, i & 0xff),
                                       30000 + (i % 30000), 53) for i in range(flows)]
            default_frames = [P.udp_frame(C, "198.18.200.%d" % (i & 0xff), 1 + i, 9)
                              for i in range(flows)]
            exact = new_flow_run(dp, egress, exact_frames, args.rounds)
            cidr = new_flow_run(dp, egress, cidr_frames, args.rounds)
            default = new_flow_run(dp, egress, default_frames, args.rounds)
            # A single run also pays the timer; this is the floor for the new-flow rows.
            single_floor = new_flow_run(dp, noop, default_frames[:2000], args.rounds)
            # Decision without the session insert: critical pressure passes it untracked.
            cfg = dp.maps.config()
            cfg.pressure_warn_sessions = cfg.pressure_crit_sessions = 1
            dp.maps.write_config(cfg)
            decide_only = new_flow_run(dp, egress, default_frames, args.rounds)
            cfg.pressure_warn_sessions = cfg.pressure_crit_sessions = 0
            dp.maps.write_config(cfg)
            floor = statistics.median(empty)
            for name, values in (("empty program (floor)", empty), ("session hit", hit),
                                 ("empty program, single run (floor)", single_floor),
                                 ("new flow, exact rule", exact), ("new flow, CIDR rule", cidr),
                                 ("new flow, default action", default),
                                 ("new flow, default, no session insert", decide_only)):
                med, spread = fmt(median_spread(values))
                rows.append((state, name, med, spread,
                             "%.1fx" % (statistics.median(values) / floor if floor else 0)))
            if loaded:
                READ_BACK_ROWS.extend(read_back_rows(dp, args.rounds))
    finally:
        dp.close()
    return rows


READ_BACK_ROWS = []


def read_back_rows(dp, rounds):
    """microseg_facts and the monitor's recount with 1,000,000 live sessions."""
    from ansible_collections.ebpf.microseg.plugins.module_utils import _facts, _netlink, _sessions
    from ansible_collections.ebpf.microseg.tests.functional.ansible_runner import run_adhoc
    live = dp.maps.count("session_map")
    rows = []
    ipr = _netlink.open_route()
    try:
        timings = []
        for _round in range(rounds):
            started = time.time()
            _facts.gather(dp.pin_path, ipr)
            timings.append(time.time() - started)
        rows.append(("facts gather (module code path)", live, timings))
    finally:
        ipr.close()
    timings = []
    for _round in range(max(1, rounds // 2)):
        res = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % dp.pin_path)
        assert res.rc == 0, res.stdout
        timings.append(res.seconds)
    rows.append(("ansible -m microseg_facts (ad hoc, wall)", live, timings))
    timings = []
    for _round in range(rounds):
        started = time.time()
        _sessions.sweep(dp.maps, time.monotonic_ns(), _sessions.timeouts_ns({}), delete=False)
        timings.append(time.time() - started)
    rows.append(("monitor recount + expiry scan (one tick)", live, timings))
    out = []
    for name, count, values in rows:
        med, low, high = median_spread(values)
        out.append((name, "{:,}".format(count), "%.2f (%.2f-%.2f)" % (med, low, high)))
    return out


def _fresh_config(dp):
    cfg = dp.maps.config()
    cfg.session_max = dp.sizes["session_map_size"]
    return cfg


def control_section(args):
    from ansible_collections.ebpf.microseg.tests.functional.ansible_runner import run_playbook
    from ansible_collections.ebpf.microseg.tests.functional.datapath import new_pin_path
    from ansible_collections.ebpf.microseg.tests.functional.netlab import Lab

    lab = Lab(subnet="198.18.150", names=("a", "b", "c"))
    pin = new_pin_path("bench")
    rows = []
    try:
        task = {"ebpf.microseg.microseg_program": {"bridge": lab.bridge, "pin_path": pin}}
        first = run_playbook([task])
        rows.append(("microseg_program, first run (compile + attach 3 veths)",
                     "%.2f" % first.seconds, str(first.task().get("compile_seconds"))))
        times = []
        for _round in range(args.rounds):
            again = run_playbook([task])
            assert again.task()["changed"] is False
            times.append(again.seconds)
        med, low, high = median_spread(times)
        rows.append(("microseg_program, no-op re-run (median of %d)" % len(times),
                     "%.2f (%.2f-%.2f)" % (med, low, high), "-"))
        run_playbook([{"ebpf.microseg.microseg_program": {"state": "absent", "pin_path": pin}}])
    finally:
        lab.destroy()
        _loader.remove_pins(pin)
    return rows


def table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1000000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flows", type=int, default=20000)
    parser.add_argument("--full", action="store_true", help="also with 100k/10k/1M loaded")
    parser.add_argument("--skip-control", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true", help="no lab fleet sections")
    parser.add_argument("--skip-traffic", action="store_true", help="no real-traffic section")
    args = parser.parse_args()

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sections = []
    print("data plane: BPF_PROG_TEST_RUN, repeat=%d x %d rounds, %d new flows per round"
          % (args.repeat, args.rounds, args.flows), file=sys.stderr)
    rows = datapath_section(args)
    sections.append(("Data plane, ns per packet (median, min-max over rounds)",
                     table(("maps", "path", "ns/pkt", "spread", "vs floor"), rows)))
    if READ_BACK_ROWS:
        sections.append(("Reading the data plane back with 1M sessions, seconds",
                         table(("what", "sessions", "seconds (median, min-max)"),
                               READ_BACK_ROWS)))
    if not args.skip_control:
        print("control plane: ansible-playbook on localhost", file=sys.stderr)
        rows = control_section(args)
        sections.append(("Control plane, wall seconds",
                         table(("run", "seconds", "compile s"), rows)))
        print("control plane: microseg_policy converge at 100k exact + 10k CIDR rules",
              file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench.converge import converge_rows
        sections.append(("microseg_policy converge (module code path), wall seconds",
                         table(("run", "seconds", "entries moved", "changed"),
                               converge_rows())))
    if READ_BACK_ROWS:
        print("control plane: microseg-monitor CPU and memory", file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench import monitor as monitor_bench
        sections.append(("microseg-monitor CPU and memory",
                         table(("state", "CPU % of one core", "RSS MiB", "sessions"),
                               monitor_bench.rows())))
    if not args.skip_fleet:
        print("control plane: site.yml on the lab fleet (3 and 10 hosts), iptables comparison",
              file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench import fleet as fleet_bench
        sections.append(("site.yml on the lab fleet, wall seconds",
                         table(("run", "seconds", "changed tasks"), fleet_bench.site_rows([3, 10]))))
        sections.append(("Pushing R rules: microseg_policy vs ansible.builtin.iptables, wall seconds",
                         table(("contender", "first run", "re-run", "changed on re-run"),
                               fleet_bench.policy_rows([10, 100, 1000], 100))))
    if not args.skip_traffic and os.path.exists(os.path.join(HERE, "traffic.py")):
        print("data plane: real traffic against iptables and nftables", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(HERE, "traffic.py")], check=True)
        with open(os.path.join(HERE, "traffic.md")) as handle:
            body = handle.read()
        # traffic.md carries its own "## " title; keep it as the section's title.
        title, _newline, rest = body.partition("\n")
        sections.append((title.lstrip("# ").strip(), rest.strip()))
    text = "\n\n".join("## %s\n\n%s" % (title, body) for title, body in sections)
    print(text)
    with open(os.path.join(HERE, "results.md"), "w") as handle:
        handle.write("# make bench results\n\n%s\n\nkernel %s, %d CPUs\n"
                     % (text, os.uname().release, len(bpf.possible_cpus())))


if __name__ == "__main__":
    main()

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

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness import bpf_syscall_extra as bpfx
from ansible_collections.ebpf.microseg.tests.harness import packets as P
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.flow_stream import (
    C, CIDR_STREAM, DEFAULT_STREAM, EXACT_STREAM, UDP, load_exact_rules, reset_pressure,
    streamed_run)

HERE = os.path.dirname(os.path.abspath(__file__))


def median_spread(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


def fmt(ns_triplet):
    med, low, high = ns_triplet
    return "%.1f" % med, "%.1f-%.1f" % (low, high)


def repeat_run(dp, fd, frame, repeat, rounds):
    out = []
    for _round in range(rounds):
        _ret, _data, duration = bpfx.prog_test_run(fd, frame, repeat=repeat)
        out.append(float(duration))
    return out


def new_flow_run(dp, fd, frames, rounds):
    """Each frame once (repeat=1): every run is the first packet of a new flow, and every
    run pays a syscall in between, so caches are as cold as a lone new flow finds them."""
    keys = [_session_key_of(frame).pack() for frame in frames]
    out = []
    for _round in range(rounds):
        reset_pressure(dp)
        total = 0
        for frame in frames:
            _ret, _data, duration = bpfx.prog_test_run(fd, frame, repeat=1)
            total += duration
        out.append(total / float(len(frames)))
        # Forget only the probe flows: a loaded session map must stay loaded.
        bpf.map_delete_batch(dp.maps.fd("session_map"), keys, ctypes.sizeof(_maps.SessionKey))
    return out


def _session_key_of(frame):
    """Session key of an egress UDP frame built by packets.udp_frame (no IP options)."""
    return _maps.SessionKey(src_ip=struct.unpack("=I", frame[26:30])[0],
                            dst_ip=struct.unpack("=I", frame[30:34])[0],
                            src_port=struct.unpack("!H", frame[34:36])[0],
                            dst_port=struct.unpack("!H", frame[36:38])[0], protocol=UDP)


def _on_each_cpu(chunks, write):
    """Spread writes over the CPUs: the session map has per-CPU LRU lists, and a map
    filled from one CPU would leave that CPU's share full and every new flow evicting."""
    saved = os.sched_getaffinity(0)
    cpus = []
    for cpu in bpf.possible_cpus():
        try:
            os.sched_setaffinity(0, {cpu})   # possible is not online: keep those we can use
            cpus.append(cpu)
        except OSError:
            pass
    try:
        for index, chunk in enumerate(chunks):
            os.sched_setaffinity(0, {cpus[index % len(cpus)]})
            write(chunk)
    finally:
        os.sched_setaffinity(0, saved)


def load_cidr_rules(dp, count):
    """count /28 rules in 198.19.0.0/16 (final allow), none covering a probe flow."""
    pairs = []
    for i in range(count):
        key = _maps.LpmKey(prefixlen=32 + 28, class_id=(dp.policy_set << 1),
                           ip=_maps.ip_to_u32("198.19.%d.%d" % ((i >> 4) & 0xff, (i & 0xf) << 4)))
        pairs.append((key, _maps.RangeValue(policy_id=200000 + i, action=0,
                                            flags=_abi.RANGE_FLAG_FINAL)))
    dp.maps.update_many("ip_range_map", pairs)


def load_sessions(dp, count):
    """count sessions from 198.19.x.y peers, none a probe flow, spread over the CPUs."""
    rng = random.Random(7)
    chunks = []
    pairs = []
    for i in range(count):
        key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.19.%d.%d" % (rng.randrange(256), rng.randrange(256))),
                               dst_ip=_maps.ip_to_u32("198.18.%d.%d" % (i >> 8 & 0xff, i & 0xff)),
                               src_port=i & 0xffff, dst_port=(i >> 16) + 1, protocol=UDP)
        pairs.append((key, _maps.SessionValue(packets=1)))
        if len(pairs) >= 100000:
            chunks.append(pairs)
            pairs = []
    if pairs:
        chunks.append(pairs)
    _on_each_cpu(chunks, lambda chunk: dp.maps.update_many("session_map", chunk))
    dp.live_sessions = dp.maps.count("session_map")


def datapath_section(args):
    sizes = {"policy_map_size": 100000 * 2, "range_map_size": 10000 * 2,
             "session_map_size": 1000000 * 2 if args.full else 1000000,
             "rule_stats_size": 262144}
    dp = Datapath(sizes=sizes, functions=list(_loader.PROGRAMS) + [
        "microseg_noop", "microseg_bench_new_flow", "microseg_bench_floor"],
        defines=("MS_BENCH",))
    rows = []
    try:
        egress = dp.fds["microseg_from_container"]
        noop = dp.fds["microseg_noop"]
        stream_fd = dp.fds["microseg_bench_new_flow"]
        stream_floor_fd = dp.fds["microseg_bench_floor"]
        # Streaming exact-rule flows needs one rule per flow, so the small policy has
        # --flows exact rules; its CIDR path has 10 rules.
        states = [("small policy", args.flows, 9, 0)]
        if args.full:
            states.append(("full maps", 100000, 10000, 1000000))
        for state, exact_rules, cidr_rules, sessions in states:
            dp.reset()
            dp.live_sessions = 0
            started = time.time()
            load_exact_rules(dp, exact_rules)
            load_cidr_rules(dp, cidr_rules)
            # The rule CIDR_STREAM's flows hit: the 10th (or 10,001st) CIDR rule.
            dp.add_remote_cidr("198.18.64.0/18", "egress", "allow", policy_id=9)
            if sessions:
                load_sessions(dp, sessions)
            # Pressure levels on, at the role's defaults (80% / 95% of the map).
            cfg = _fresh_config(dp)
            cfg.pressure_warn_sessions = cfg.session_max * 80 // 100
            cfg.pressure_crit_sessions = cfg.session_max * 95 // 100
            dp.maps.write_config(cfg)
            print("  %s: %d exact, %d CIDR rules, %d sessions loaded in %.1f s"
                  % (state, exact_rules, cidr_rules + 1, dp.live_sessions,
                     time.time() - started), file=sys.stderr)

            dp.add_exact(C, "198.18.2.1", 40000, 5432, UDP, "egress", "allow", policy_id=7)
            frame = P.udp_frame(C, "198.18.2.1", 40000, 5432)
            dp.egress(frame)   # creates the session
            empty = repeat_run(dp, noop, frame, args.repeat, args.rounds)
            hit = repeat_run(dp, egress, frame, args.repeat, args.rounds)
            flows = min(args.stream, args.repeat)
            stream_floor = streamed_run(dp, stream_floor_fd, DEFAULT_STREAM, flows, args.rounds,
                                        forget=False)
            exact = streamed_run(dp, stream_fd, EXACT_STREAM, exact_rules, args.rounds)
            cidr = streamed_run(dp, stream_fd, CIDR_STREAM, flows, args.rounds)
            default = streamed_run(dp, stream_fd, DEFAULT_STREAM, flows, args.rounds)
            # Decision without the session insert: critical pressure passes it untracked.
            cfg = dp.maps.config()
            warn, crit = cfg.pressure_warn_sessions, cfg.pressure_crit_sessions
            cfg.pressure_warn_sessions = cfg.pressure_crit_sessions = 1
            dp.maps.write_config(cfg)
            decide_only = streamed_run(dp, stream_fd, DEFAULT_STREAM, flows, args.rounds,
                                       forget=False)
            cfg.pressure_warn_sessions, cfg.pressure_crit_sessions = warn, crit
            dp.maps.write_config(cfg)
            # One packet per syscall: what a lone new flow pays with cold caches.
            lone = [EXACT_STREAM.frame(i) for i in range(min(exact_rules, 20000))]
            single_floor = new_flow_run(dp, noop, lone, args.rounds)
            cold = new_flow_run(dp, egress, lone, args.rounds)

            floor = statistics.median(empty)
            stream_base = statistics.median(stream_floor)
            for name, values, base in (
                    ("empty program (floor)", empty, floor),
                    ("session hit", hit, floor),
                    ("flow-stream floor (rewrite only)", stream_floor, stream_base),
                    ("new flow, exact rule (%s rules)" % "{:,}".format(exact_rules), exact,
                     stream_base),
                    ("new flow, CIDR rule (%s rules)" % "{:,}".format(cidr_rules + 1), cidr,
                     stream_base),
                    ("new flow, default action", default, stream_base),
                    ("new flow, default, no session insert", decide_only, stream_base),
                    ("one packet per syscall: floor", single_floor,
                     statistics.median(single_floor)),
                    ("one packet per syscall: new flow, exact", cold,
                     statistics.median(single_floor))):
                med, spread = fmt(median_spread(values))
                rows.append((state, name, med, spread,
                             "%.1fx" % (statistics.median(values) / floor if floor else 0),
                             "%.1f" % (statistics.median(values) - base)))
            if args.full and sessions:
                READ_BACK_ROWS.extend(read_back_rows(dp, args.rounds))
    finally:
        dp.close()
    return rows


def new_flow_breakdown(args):
    """The same default-action stream with small and full-size hash maps.

    A new flow touches a random bucket of session_map (the miss, then the insert) and of
    policy_map (the exact lookup). Small maps keep those buckets in cache; full-size ones
    do not, so the difference is what the cache and TLB misses cost on this machine.
    """
    flows = min(args.stream, args.repeat)
    rounds = max(3, args.rounds)
    rows = []
    for sessions, rules in ((4096, 4096), (4096, 200000), (2000000, 4096), (2000000, 200000)):
        dp = Datapath(sizes={"policy_map_size": rules, "range_map_size": 1024,
                             "session_map_size": sessions, "rule_stats_size": 4096},
                      functions=["microseg_bench_new_flow", "microseg_bench_floor"],
                      defines=("MS_BENCH",))
        try:
            dp.live_sessions = 0
            load_exact_rules(dp, 1000)
            floor = statistics.median(streamed_run(dp, dp.fds["microseg_bench_floor"],
                                                   DEFAULT_STREAM, flows, rounds, forget=False))
            full = statistics.median(streamed_run(dp, dp.fds["microseg_bench_new_flow"],
                                                  DEFAULT_STREAM, flows, rounds))
            dp.set_config(pressure_warn_sessions=1, pressure_crit_sessions=1)
            decide = statistics.median(streamed_run(dp, dp.fds["microseg_bench_new_flow"],
                                                    DEFAULT_STREAM, flows, rounds, forget=False))
        finally:
            dp.close()
        rows.append(("{:,}".format(sessions), "{:,}".format(rules), "%.0f" % (decide - floor),
                     "%.0f" % (full - decide), "%.0f" % (full - floor)))
    return rows


READ_BACK_ROWS = []


def read_back_rows(dp, rounds):
    """microseg_facts and the monitor's recount with 1,000,000 live sessions."""
    from ansible_collections.ebpf.microseg.plugins.module_utils import _facts, _netlink, _sessions
    from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_adhoc
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
    from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_playbook
    from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
    from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab

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


class Results:
    """bench/results.md, rewritten after every section: a failure late in a 20-minute run
    keeps what was measured before it. Each section is printed as it completes."""

    def __init__(self, path):
        self.path = path
        self.sections = []
        self.footer = "incomplete: the run stopped or is still going"
        self._write()

    def add(self, section):
        title, body = section
        self.sections.append(section)
        print("## %s\n\n%s\n" % (title, body), flush=True)
        self._write()

    def finish(self, seconds):
        self.footer = "complete in %d min %02d s" % (seconds // 60, seconds % 60)
        print(self.footer)
        self._write()

    def _write(self):
        text = "\n\n".join("## %s\n\n%s" % (title, body) for title, body in self.sections)
        with open(self.path, "w") as handle:
            handle.write("# make bench results\n\n%s\n\nkernel %s, %d CPUs; %s\n"
                         % (text, os.uname().release, len(bpf.possible_cpus()), self.footer))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1000000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flows", type=int, default=20000,
                        help="exact rules without --full (each streamed flow needs its own)")
    parser.add_argument("--stream", type=int, default=200000,
                        help="new flows per PROG_TEST_RUN on the CIDR and default paths")
    parser.add_argument("--full", action="store_true", help="also with 100k/10k/1M loaded")
    parser.add_argument("--skip-control", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true", help="no lab fleet sections")
    parser.add_argument("--skip-traffic", action="store_true", help="no real-traffic section")
    args = parser.parse_args()

    # PROG_TEST_RUN rows on one CPU; everything started later (ansible-playbook, the lab
    # fleet's sshd and modules, the monitor, traffic.py) inherits the affinity, so it is
    # given the whole machine back after the data-plane sections.
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cpus)})
    started = time.time()
    results = Results(os.path.join(HERE, "results.md"))
    print("data plane: BPF_PROG_TEST_RUN, repeat=%d x %d rounds, up to %d new flows per run"
          % (args.repeat, args.rounds, min(args.stream, args.repeat)), file=sys.stderr)
    rows = datapath_section(args)
    results.add(("Data plane, ns per packet (median, min-max over rounds)",
                 table(("maps", "path", "ns/pkt", "spread", "vs floor",
                        "ns above its floor"), rows)))
    if args.full:
        print("data plane: new-flow cost with small and full-size maps", file=sys.stderr)
        results.add((
            "Where a new flow's time goes: ns above the stream floor, default-action flows, "
            "by hash map size (buckets in cache or not)",
            table(("session_map entries", "policy_map entries", "decide (no insert)",
                   "session insert", "new flow"), new_flow_breakdown(args))))
    print("data plane: a denied flood, with and without deny entries", file=sys.stderr)
    from ansible_collections.ebpf.microseg.bench import denied_flood
    results.add(("A denied flood of %s distinct flows: ns per packet above its floor, and "
                 "what it leaves in the session map" % "{:,}".format(denied_flood.FLOWS),
                 table(denied_flood.HEADERS, denied_flood.rows(args.rounds, args.repeat))))
    os.sched_setaffinity(0, all_cpus)
    if READ_BACK_ROWS:
        results.add(("Reading the data plane back with 1M sessions, seconds",
                     table(("what", "sessions", "seconds (median, min-max)"),
                           READ_BACK_ROWS)))
    if not args.skip_control:
        print("control plane: ansible-playbook on localhost", file=sys.stderr)
        rows = control_section(args)
        results.add(("Control plane, wall seconds",
                     table(("run", "seconds", "compile s"), rows)))
        print("control plane: microseg_policy converge at 100k exact + 10k CIDR rules",
              file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench.converge import converge_rows
        results.add(("microseg_policy converge (module code path), wall seconds",
                     table(("run", "seconds", "entries moved", "changed"),
                           converge_rows())))
        print("control plane: microseg_explain against 10,000 rules", file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench import explain as explain_bench
        results.add(("microseg_explain against 10,000 rules, seconds",
                     table(explain_bench.HEADERS, explain_bench.rows(args.rounds))))
    if READ_BACK_ROWS:
        print("control plane: microseg-monitor CPU and memory", file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench import monitor as monitor_bench
        results.add(("microseg-monitor CPU and memory",
                     table(("state", "CPU % of one core", "RSS MiB", "sessions"),
                           monitor_bench.rows())))
    if not args.skip_fleet:
        print("control plane: site.yml on the lab fleet (3 and 10 hosts), iptables comparison",
              file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench import fleet as fleet_bench
        pushed = []

        def push():
            pushed.extend(fleet_bench.policy_rows_on_fleet([10, 100, 1000], 100))

        results.add(("site.yml on the lab fleet, wall seconds",
                     table(("run", "seconds", "changed tasks"),
                           fleet_bench.site_rows([3, 10], on_three_hosts=push))))
        results.add(("Pushing R rules to 3 hosts: microseg_policy vs ansible.builtin.iptables, "
                     "wall seconds",
                     table(("contender", "first run", "re-run", "changed on re-run"), pushed)))
    if not args.skip_traffic:
        print("data plane: floods from one container on real traffic", file=sys.stderr)
        from ansible_collections.ebpf.microseg.bench import floods
        results.add(("Floods from one container, new allowed connections from another "
                     "(default sizes, real traffic)", table(floods.HEADERS, floods.rows())))
    if not args.skip_traffic and os.path.exists(os.path.join(HERE, "traffic.py")):
        print("data plane: real traffic against iptables and nftables", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(HERE, "traffic.py")], check=True)
        with open(os.path.join(HERE, "traffic.md")) as handle:
            body = handle.read()
        # traffic.md carries its own "## " title; keep it as the section's title.
        title, _newline, rest = body.partition("\n")
        results.add((title.lstrip("# ").strip(), rest.strip()))
    results.finish(time.time() - started)


if __name__ == "__main__":
    main()

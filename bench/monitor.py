# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg-monitor's CPU and memory: idle, under a SYN flood, and with 1,000,000 sessions.

The real executable (files/microseg-monitor, interval 1 s) against the real program on two
container namespaces; CPU from /proc/PID/stat (user + system) over a window, memory as RSS.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import random
import signal
import subprocess
import sys
import threading
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import collections_path
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.netlab import PROBE, Lab

HERE = os.path.dirname(os.path.abspath(__file__))
MONITOR = os.path.join(os.path.dirname(HERE), "files", "microseg-monitor")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(TICKS)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def window(pid, seconds, dp=None):
    """CPU % over the window, peak RSS, and the peak session count the monitor wrote."""
    before, started = cpu_seconds(pid), time.time()
    peak = rss_mib(pid)
    sessions = 0
    while time.time() - started < seconds:
        time.sleep(0.25)
        peak = max(peak, rss_mib(pid))
        if dp is not None:
            sessions = max(sessions, dp.pressure().total_sessions)
    return 100.0 * (cpu_seconds(pid) - before) / (time.time() - started), peak, sessions


def load_sessions(dp, count):
    rng = random.Random(3)
    pairs = []
    now = time.monotonic_ns()
    for i in range(count):
        key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.19.%d.%d" % (rng.randrange(256),
                                                                        rng.randrange(256))),
                               dst_ip=_maps.ip_to_u32("198.18.%d.%d" % (i >> 8 & 0xff, i & 0xff)),
                               src_port=i & 0xffff, dst_port=(i >> 16) + 1, protocol=17)
        pairs.append((key, _maps.SessionValue(packets=1, last_seen=now)))
        if len(pairs) >= 100000:
            dp.maps.update_many("session_map", pairs)
            pairs = []
    if pairs:
        dp.maps.update_many("session_map", pairs)


def rows(seconds=10.0):
    lab = Lab(subnet="198.18.104", names=("web", "db"))
    dp = None
    monitor = None
    out = []
    try:
        dp = Datapath(sizes={"session_map_size": 2000000, "policy_map_size": 1024})
        dp.set_config(syn_flood_threshold=20000)
        lab.attach(dp.fds, dp.pin_path)
        lab.wait_links()
        ghost = "198.18.104.99"
        lab["web"].run("ip", "neigh", "replace", ghost, "lladdr", "02:00:00:00:00:99", "dev",
                       "eth0", "nud", "permanent")
        env = dict(os.environ, PYTHONPATH=collections_path())
        monitor = subprocess.Popen([sys.executable, MONITOR, "--pin-path", dp.pin_path,
                                    "--interval", "1", "--metrics-port", "0", "--log-file", "",
                                    "--timeout-tcp-syn", "2", "--no-attach"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(2)
        cpu, rss, _sessions = window(monitor.pid, seconds)
        out.append(("idle (empty maps)", "%.2f" % cpu, "%.1f" % rss, "0"))

        stop = threading.Event()
        sent = [0]

        def flood():
            while not stop.is_set():
                lab["web"].run(sys.executable, PROBE, "synflood", ghost, "9999", "2000",
                               str(sent[0]))
                sent[0] += 2000
        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            time.sleep(1)
            cpu, rss, peak_sessions = window(monitor.pid, seconds, dp)
        finally:
            stop.set()
            flooder.join()
        floods = dp.stats()["tcp_syn_floods"]
        out.append(("SYN flood (%d SYNs in %.0f s, %d dropped by the guard at 20,000 "
                    "half-open; 2 s half-open timeout)" % (sent[0], seconds + 1, floods),
                    "%.2f" % cpu, "%.1f" % rss, "peak {:,}".format(peak_sessions)))
        load_sessions(dp, 1000000)
        time.sleep(3)
        cpu, rss, _sessions = window(monitor.pid, seconds * 2)
        out.append(("1,000,000 sessions (interval stretches to 4x the pass time)",
                    "%.2f" % cpu, "%.1f" % rss, "{:,}".format(dp.pressure().total_sessions)))
    finally:
        if monitor and monitor.poll() is None:
            os.kill(monitor.pid, signal.SIGTERM)
            monitor.wait()
        lab.destroy()
        if dp:
            dp.close()
    return out


if __name__ == "__main__":
    from ansible_collections.ebpf.microseg.bench.run import table  # pylint: disable=import-outside-toplevel
    print(table(("state", "CPU % of one core", "RSS MiB", "sessions"), rows()))

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a user sees during and after a flood (issue 24), on real traffic.

Three containers on a bridge, the program on every port at the module's default sizes
and thresholds, default deny with client -> server tcp/5432 and flood -> its targets
allowed. Each scenario floods from one container while another opens new allowed
connections, and reports how many succeed during the flood and how long after it until
service is full again (every connection of a batch succeeds), with and without the
monitor.

Run alone: `make bench-floods` (also part of `make bench`). Works against older
releases of the collection too (fields they lack are skipped), for before/after tables.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import subprocess
import sys
import textwrap
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab
from ansible_collections.ebpf.microseg.tests.harness.monitor_process import MonitorProcess
from ansible_collections.ebpf.microseg.tests.harness.pair_rules import allow_pair

SUBNET = "198.18.111"
TARGETS = SUBNET + ".%d"          # 200..215: static neighbours nobody owns
TARGET_FIRST, TARGET_COUNT = 200, 16
DENY_BOTH = {"egress": "deny", "ingress": "deny"}

# Distinct UDP flows as fast as one Python loop sends them, for `seconds`.
UDP_FLOOD = textwrap.dedent("""
    import socket, sys, time
    first, count, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    base = sys.argv[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent, port, deadline = 0, 1024, time.time() + seconds
    while time.time() < deadline:
        for i in range(count):
            try:
                sock.sendto(b"x", ("%s.%d" % (base, first + i), port))
                sent += 1
            except OSError:
                pass
        port = port + 1 if port < 65535 else 1024
    print(sent)
""")

# Opens `count` connections one after another; prints "ok" or "fail" for each, with time.
CONNECTOR = textwrap.dedent("""
    import socket, sys, time
    host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    pause = float(sys.argv[5])
    for _ in range(count):
        started = time.time()
        try:
            conn = socket.create_connection((host, port), timeout=timeout)
            conn.sendall(b"ping"); ok = conn.recv(16) == b"ping"; conn.close()
        except OSError:
            ok = False
        print("%.3f %s" % (started, "ok" if ok else "fail"), flush=True)
        time.sleep(pause)
""")


def _configure(dp, sizes):
    cfg = dp.maps.config()
    cfg.default_action[0] = cfg.default_action[1] = _abi.MS_ACTION_DENY
    cfg.session_max = sizes["session_map_size"]
    cfg.pressure_warn_sessions = sizes["session_map_size"] * 70 // 100
    cfg.pressure_crit_sessions = sizes["session_map_size"] * 90 // 100
    cfg.syn_flood_threshold = 10000
    defaults = {"endpoint_half_open_quota": 2048,
                "endpoint_session_quota": sizes["session_map_size"] // 2}
    for name, value in defaults.items():
        if hasattr(cfg, name):        # releases before the per-endpoint quotas lack them
            setattr(cfg, name, value)
    dp.maps.write_config(cfg)


def _connect(ctr, host, count, timeout=1.0, pause=0.02):
    return subprocess.Popen(["ip", "netns", "exec", ctr.netns, sys.executable, "-c", CONNECTOR,
                             host, "5432", str(count), str(timeout), str(pause)],
                            stdout=subprocess.PIPE, universal_newlines=True)


def _results(proc):
    out = proc.communicate()[0]
    return [(float(t), r == "ok") for t, r in (line.split() for line in out.splitlines())]


def _recovery(lab, ended, deadline_s=30.0, batch=10):
    """Seconds from `ended` until a whole batch of new connections succeeds."""
    client, server = lab["client"], lab["server"]
    while time.time() - ended < deadline_s:
        results = _results(_connect(client, server.address, batch, 0.5))
        if all(ok for _t, ok in results):
            return results[0][0] - ended
    return None


def _flood_udp(lab, seconds):
    return subprocess.Popen(["ip", "netns", "exec", lab["flood"].netns, sys.executable, "-c",
                             UDP_FLOOD, SUBNET, str(TARGET_FIRST), str(TARGET_COUNT),
                             str(seconds)], stdout=subprocess.PIPE, universal_newlines=True)


def _flood_denied_syns(lab, count):
    from ansible_collections.ebpf.microseg.tests.harness.netlab import PROBE
    return subprocess.Popen(["ip", "netns", "exec", lab["flood"].netns, sys.executable, PROBE,
                             "synflood", lab["server"].address, "9000", str(count)],
                            stdout=subprocess.PIPE, universal_newlines=True)


def scenario(lab, dp, sizes, name, flood, monitor, spread):
    dp.maps.clear("session_map")
    if "endpoint_usage_map" in dp.maps.fds:
        dp.maps.clear("endpoint_usage_map")
    dp.maps.write_pressure(_maps.MapPressure(last_check=time.monotonic_ns()))
    _configure(dp, sizes)
    started = time.time()
    flooder = flood()
    time.sleep(0.5)
    # 40 connections spread over the flood (`spread` seconds), one at a time.
    during = _results(_connect(lab["client"], lab["server"].address, 40, 1.0, spread / 40.0))
    sent = flooder.communicate()[0].strip()
    ended = time.time()
    peak = dp.pressure()
    recovery = _recovery(lab, ended)
    ok = sum(1 for _t, good in during if good)
    return (name, "yes" if monitor else "no", sent.split()[-1] if sent else "?",
            "{:,}".format(peak.total_sessions), _abi.PRESSURE_LEVELS[peak.pressure_level],
            "%d/%d (%.0f%%)" % (ok, len(during), 100.0 * ok / max(1, len(during))),
            "%.1f" % recovery if recovery is not None else "> 30",
            "%.0f" % (time.time() - started))


HEADERS = ("flood", "monitor", "packets sent", "sessions at flood end", "level",
           "new allowed connections during", "s to full service after", "scenario s")


def rows(seconds=8.0):
    sizes = dict(_maps.DEFAULT_SIZES)
    lab = Lab(subnet=SUBNET, names=("flood", "client", "server"))
    dp = None
    monitor = None
    out = []
    try:
        dp = Datapath(sizes=sizes)
        lab.attach(dp.fds, dp.pin_path)
        lab.wait_links()
        for i in range(TARGET_COUNT):
            lab["flood"].run("ip", "neigh", "replace", TARGETS % (TARGET_FIRST + i), "lladdr",
                             "02:00:00:00:01:%02x" % i, "dev", "eth0", "nud", "permanent")
        lab["server"].serve("tcp", 5432)
        allow_pair(dp, lab["client"], lab["server"], 5432)
        dp.add_remote_cidr(SUBNET + ".192/27", "egress", "allow", policy_id=77)
        for with_monitor in (False, True):
            if with_monitor:
                # The role's defaults, not the monitor tests' short ones.
                monitor = MonitorProcess(dp.pin_path, "--interval", "1", "--timeout-udp", "60",
                                         "--timeout-tcp-syn", "30", "--timeout-icmp", "30")
                monitor.wait_for("opened the data plane")
            out.append(scenario(lab, dp, sizes, "UDP, distinct allowed flows (%g s)" % seconds,
                                lambda: _flood_udp(lab, seconds), with_monitor, seconds - 1))
            out.append(scenario(lab, dp, sizes, "12,000 denied SYNs",
                                lambda: _flood_denied_syns(lab, 12000), with_monitor, 1.0))
    finally:
        if monitor:
            monitor.terminate()
        lab.destroy()
        if dp:
            dp.close()
    return out


def main():
    from ansible_collections.ebpf.microseg.bench.run import table
    print("## Floods from one container, new allowed connections from another "
          "(default sizes)\n")
    print(table(HEADERS, rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

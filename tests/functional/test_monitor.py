# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg-monitor against the real program, driven by real traffic between namespaces."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath, new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.monitor_process import MonitorProcess
from ansible_collections.ebpf.microseg.tests.harness.netlab import PROBE, Lab, ifindex

SUBNET = "198.18.103"
GHOST = SUBNET + ".99"          # a static neighbour nobody owns: SYNs to it stay SYN_SENT
GHOST_MAC = "02:00:00:00:00:99"
LOG_RATE = 10
SYN_THRESHOLD = 150


def policy(lab):
    web, db = lab["web"].address + "/32", lab["db"].address + "/32"
    return {
        "segments": {"web": [web], "db": [db]},
        "default_action": {"egress": "deny", "ingress": "deny"},
        "rules": [
            {"name": "web-to-db-pg", "direction": "both", "src": ["web"], "dst": ["db"],
             "protocol": "tcp", "dst_ports": [5432], "action": "allow"},
            {"name": "web-to-db-http-logged", "direction": "both", "src": ["web"], "dst": ["db"],
             "protocol": "tcp", "dst_ports": [80], "action": "log"},
            {"name": "web-to-db-dns", "direction": "both", "src": ["web"], "dst": ["db"],
             "protocol": "udp", "dst_ports": [53], "action": "allow"},
            {"name": "web-to-ghost", "direction": "egress", "src": ["web"], "dst": [GHOST + "/32"],
             "protocol": "tcp", "dst_ports": [9999], "action": "allow"},
        ],
    }


@pytest.fixture(scope="module")
def monitored():
    """web, db on a bridge; program + policy through ansible; the monitor running."""
    lab = Lab(subnet=SUBNET, names=("web", "db"))
    pin = new_pin_path("mon")
    monitor = None
    try:
        program = {"ebpf.microseg.microseg_program": {
            "bridge": lab.bridge, "pin_path": pin, "session_map_size": 4096,
            "syn_flood_threshold": SYN_THRESHOLD, "pressure_warning_percent": 2,
            "pressure_critical_percent": 90, "log_rate": LOG_RATE}}
        doc = policy(lab)
        converge = {"ebpf.microseg.microseg_policy": dict(doc, pin_path=pin, state="overridden")}
        res = run_playbook([program, converge])
        assert res.rc == 0, res.stdout
        lab.wait_links()
        lab["web"].run("ip", "neigh", "replace", GHOST, "lladdr", GHOST_MAC, "dev", "eth0",
                       "nud", "permanent")
        for port in (5432, 80):
            lab["db"].serve("tcp", port)
        lab["db"].serve("udp", 53)
        monitor = MonitorProcess(pin, "--bridge", lab.bridge)
        monitor.wait_for("opened the data plane")
        yield lab, pin, monitor
    finally:
        if monitor:
            monitor.terminate()
        lab.destroy(pin_path=pin)


def sessions(pin):
    with _maps.PinnedMaps(pin, names=["session_map"]) as pinned:
        return list(pinned.items("session_map"))


def pressure(pin):
    with _maps.PinnedMaps(pin, names=["map_pressure_map"]) as pinned:
        return pinned.pressure()


def stats(pin):
    with _maps.PinnedMaps(pin, names=["stats_map"]) as pinned:
        return pinned.stats()


def flows_to(pin, port, protocol):
    return [(k, v) for k, v in sessions(pin) if k.dst_port == port and k.protocol == protocol]


def ghost_flows(pin):
    return [(k, v) for k, v in sessions(pin) if 9999 in (k.src_port, k.dst_port)]


def test_udp_session_expires_on_schedule(monitored):
    lab, pin, _monitor = monitored
    assert lab["web"].probe("udp", lab["db"].address, 53) == "ok"
    created = time.monotonic()
    assert len(flows_to(pin, 53, 17)) == 1
    time.sleep(1.0)
    assert len(flows_to(pin, 53, 17)) == 1, "deleted before its 2 s idle timeout"
    while flows_to(pin, 53, 17):
        assert time.monotonic() - created < 4.0, "UDP session outlived 2 s timeout + 2 s"
        time.sleep(0.05)
    gone = time.monotonic() - created
    assert gone >= 2.0
    # The recount the data plane reads follows the deletion.
    time.sleep(0.6)
    assert pressure(pin).total_sessions == len(sessions(pin))


def test_closed_tcp_session_expires_fast_and_recount_is_true(monitored):
    lab, pin, _monitor = monitored
    assert lab["web"].probe("tcp", lab["db"].address, 5432) == "ok"
    states = [_abi.TCP_STATES[v.state] for _k, v in flows_to(pin, 5432, 6)]
    # The client closed first and the server answered: both sides reach TIME_WAIT or CLOSE,
    # which expire after 1 s (tcp_closed), not the 60 s of half-closed states.
    assert states and set(states) <= {"TIME_WAIT", "CLOSE"}, states
    deadline = time.monotonic() + 3.0
    while flows_to(pin, 5432, 6):
        assert time.monotonic() < deadline, [(_abi.TCP_STATES[v.state]) for _k, v in
                                             flows_to(pin, 5432, 6)]
        time.sleep(0.05)
    now = time.monotonic_ns()
    time.sleep(0.6)
    current = pressure(pin)
    assert current.last_check >= now
    assert current.total_sessions == len(sessions(pin))


def test_syn_flood_raises_counters_and_pressure_while_established_flow_works(monitored):
    lab, pin, _monitor = monitored
    web = lab["web"]
    holder = subprocess.Popen(["ip", "netns", "exec", web.netns, sys.executable, PROBE, "hold",
                               lab["db"].address, "5432"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert holder.stdout.readline().strip() == "connected"
        floods_before = stats(pin)["tcp_syn_floods"]
        out = web.run(sys.executable, PROBE, "synflood", GHOST, "9999", str(SYN_THRESHOLD + 150))
        assert out.stdout.strip() == "sent %d" % (SYN_THRESHOLD + 150)
        time.sleep(0.6)   # two monitor ticks
        # The bridge floods frames for the unknown MAC to db's port too, where the program
        # sees them as well: count half-open sessions on either port.
        half_open = [v for _k, v in ghost_flows(pin) if v.state == _abi.TCP_STATE["SYN_SENT"]]
        current = pressure(pin)
        assert len(half_open) == SYN_THRESHOLD, len(half_open)
        assert current.syn_sent_count == SYN_THRESHOLD
        assert current.total_sessions == len(sessions(pin))
        assert _abi.PRESSURE_LEVELS[current.pressure_level] == "warning"
        assert stats(pin)["tcp_syn_floods"] - floods_before >= 150
        # The established flow is a session hit: the flood guard does not touch it.
        holder.stdin.write("still-there\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "ok"
        # Half-open sessions expire after 2 s; the guard and the pressure level relax.
        deadline = time.monotonic() + 5.0
        while pressure(pin).syn_sent_count or pressure(pin).pressure_level:
            assert time.monotonic() < deadline, pressure(pin).as_dict()
            time.sleep(0.1)
        assert not ghost_flows(pin)
        assert web.probe("tcp", lab["db"].address, 5432) == "ok"
        holder.stdin.write("after\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "ok"
    finally:
        holder.stdin.close()
        holder.kill()
        holder.wait()
        holder.stdout.close()


def _events(monitor):
    with open(monitor.log_file) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_log_rule_writes_one_json_line_per_event_within_the_rate(monitored):
    lab, pin, monitor = monitored
    web, db = lab["web"], lab["db"]
    before = len(_events(monitor))
    stats_before = stats(pin)
    time.sleep(1.1)   # a fresh rate window
    for _attempt in range(3):
        assert web.probe("tcp", db.address, 80) == "ok"
    deadline = time.monotonic() + 2.0
    while len(_events(monitor)) < before + 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    events = _events(monitor)[before:]
    # Each connection is decided twice, on web's port (egress) and on db's (ingress).
    assert len(events) == 6, events
    assert sorted((e["direction"], e["interface"]) for e in events) == \
        [("egress", web.host_if)] * 3 + [("ingress", db.host_if)] * 3
    for event in events:
        assert event["rule"] == "web-to-db-http-logged"
        assert event["verdict"] == "log"
        assert event["src"] == web.address and event["dst"] == db.address
        assert event["dst_port"] == 80 and event["protocol"] == "tcp"
    # The same lines went to stdout.
    assert sum(1 for line in monitor.stdout if "web-to-db-http-logged" in line) >= 6
    # A burst beyond the rate: the kernel suppresses, the monitor writes what it got.
    time.sleep(1.1)
    burst = 12
    script = ("import socket\nfor i in range(%d):\n    s = socket.create_connection(('%s', 80), 1)\n"
              "    s.close()\n" % (burst, db.address))
    web.run(sys.executable, "-c", script)
    time.sleep(0.8)
    after = stats(pin)
    logged = after["log_events"] - stats_before["log_events"]
    suppressed = after["log_suppressed"] - stats_before["log_suppressed"]
    written = len(_events(monitor)) - before
    assert written == logged, (written, logged)
    assert logged + suppressed == 2 * (3 + burst)
    assert suppressed > 0
    # A burst inside one second can straddle two rate windows: at most two windows' worth.
    assert logged - 6 <= 2 * LOG_RATE


def test_new_veth_is_filtered_within_a_second(monitored):
    lab, pin, monitor = monitored
    started = time.monotonic()
    lab._add("late", SUBNET + ".40")  # pylint: disable=protected-access
    late = lab["late"]
    ipr = _netlink.open_route()
    try:
        index = ipr.link_lookup(ifname=late.host_if)[0]
        while not (_netlink.our_filter(ipr, index, "ingress") and
                   _netlink.our_filter(ipr, index, "egress")):
            assert time.monotonic() - started < 1.0, "not attached within a second"
            time.sleep(0.01)
        attach_seconds = time.monotonic() - started
    finally:
        ipr.close()
    assert attach_seconds < 1.0
    assert late.host_if in (_loader.read_meta(pin) or {}).get("interfaces", {})
    lab.wait_links()
    denied_before = stats(pin)["denied_packets"]
    # No rule names the late container: default deny applies to it.
    assert late.probe("tcp", lab["db"].address, 5432) == "fail"
    assert stats(pin)["denied_packets"] > denied_before
    # Removal: bookkeeping forgets the interface.
    from ansible_collections.ebpf.microseg.tests.harness.netlab import sh
    sh("ip", "link", "del", late.host_if)
    deadline = time.monotonic() + 2.0
    while late.host_if in (_loader.read_meta(pin) or {}).get("interfaces", {}):
        assert time.monotonic() < deadline, "removed interface still recorded"
        time.sleep(0.05)
    monitor.wait_for("attached to %s" % late.host_if)


def test_metrics_endpoint_parses_and_matches_the_maps(monitored):
    lab, pin, monitor = monitored
    assert lab["web"].probe("tcp", lab["db"].address, 80) == "ok"
    time.sleep(0.6)
    body = urllib.request.urlopen(monitor.metrics_url, timeout=5).read().decode()
    families = dict((family.name, family) for family in text_string_to_metric_families(body))
    assert families["microseg_up"].samples[0].value == 1
    counters = dict((s.labels["counter"], s.value)
                    for s in families["microseg_datapath"].samples)
    assert set(counters) == set(_abi.STAT_NAMES)
    assert counters["total_packets"] > 0
    live = len(sessions(pin))
    assert abs(families["microseg_sessions"].samples[0].value - live) <= 2
    hits = dict((s.labels["rule"], s.value) for s in families["microseg_rule_hits"].samples)
    assert hits["web-to-db-http-logged"] >= 1
    fill = dict((s.labels["map"], s.value) for s in families["microseg_map_fill_ratio"].samples)
    assert 0 < fill["policy_map"] + fill["ip_range_map"] <= 2
    assert families["microseg_pressure_level"].samples[0].value in (0, 1, 2)
    # Per endpoint, by interface name: the recount of the sessions each port's hooks made.
    by_endpoint = collections.Counter()
    with _maps.PinnedMaps(pin, names=["session_map"]) as pinned:
        for _key, value in pinned.items("session_map"):
            by_endpoint[value.ifindex] += 1
    indexes = dict((c.host_if, ifindex(c.host_if)) for c in (lab["web"], lab["db"]))
    per_if = dict((s.labels["interface"], s.value)
                  for s in families["microseg_endpoint_sessions"].samples)
    for name, index in indexes.items():
        assert abs(per_if[name] - by_endpoint[index]) <= 2, (name, per_if, by_endpoint)
    quotas = dict((s.labels["interface"], s.value)
                  for s in families["microseg_endpoint_half_open_quota"].samples)
    assert quotas[lab["web"].host_if] == 2048
    assert "microseg_endpoint_syn_quota_drops" in families
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(monitor.metrics_url.replace("/metrics", "/nope"), timeout=5)


def test_waits_for_pins_survives_their_removal_and_stops_on_sigterm():
    pin = new_pin_path("monw")
    monitor = MonitorProcess(pin, "--no-attach", "--metrics-port", "-1")
    dp = None
    try:
        monitor.wait_for("waiting for pinned maps")
        assert open(monitor.pid_file).read().strip() == str(monitor.proc.pid)
        dp = Datapath(pin_path=pin)
        monitor.wait_for("opened the data plane")
        time.sleep(0.5)
        assert dp.pressure().last_check > 0
        dp.close()
        dp = None
        monitor.wait_for("went away")
        time.sleep(0.5)
        assert monitor.proc.poll() is None, "\n".join(monitor.stderr)
        # Back again (a reinstall): the monitor reopens the new maps.
        dp = Datapath(pin_path=pin)
        deadline = time.monotonic() + 3
        while dp.pressure().last_check == 0:
            assert time.monotonic() < deadline, "\n".join(monitor.stderr)
            time.sleep(0.05)
        os.kill(monitor.proc.pid, signal.SIGTERM)
        assert monitor.proc.wait(timeout=3) == 0
        assert not os.path.exists(monitor.pid_file)
        assert "stopped" in monitor.stderr[-1] or monitor.wait_for("stopped")
    finally:
        monitor.terminate()
        if dp:
            dp.close()
        elif os.path.isdir(pin):
            _loader.remove_pins(pin)


def test_facts_name_rule_hits_versions_and_drift(monitored):
    from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_adhoc
    lab, pin, _monitor = monitored
    web, db = lab["web"], lab["db"]
    for _attempt in range(2):
        assert web.probe("tcp", db.address, 5432) == "ok"
    res = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s top_rules=2" % pin)
    assert res.rc == 0, res.stdout
    ms = res.task()["ansible_facts"]["microseg"]
    assert len(ms["rules"]) == 2
    every = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s top_rules=10" % pin).task()[
        "ansible_facts"]["microseg"]["rules"]
    rules = dict((rule["name"], rule) for rule in every)
    assert set(rules) == set(rule["name"] for rule in policy(lab)["rules"])
    with _maps.PinnedMaps(pin, names=["rule_stats_map"]) as pinned:
        kernel_hits = sorted((v.hits for _k, v in pinned.items("rule_stats_map")), reverse=True)
    assert [rule["hits"] for rule in ms["rules"]] == kernel_hits[:2]
    assert [rule["hits"] for rule in every] == kernel_hits
    # Two connections, each decided on both ports, plus the earlier tests' flows.
    assert rules["web-to-db-pg"]["hits"] >= 4
    assert rules["web-to-db-pg"]["last_hit"].startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
    versions = ms["versions"]
    assert versions["kernel"] == os.uname().release
    assert len(versions["source_sha256"]) == 64
    assert versions["policy_generation"] == ms["config"]["policy_generation"] >= 1
    assert versions["bcc"] and versions["kernel_headers"]
    assert ms["pressure"]["last_check"], "the monitor writes last_check"
    assert ms["drift"] == []
    # A hook that lost its filter is drift until something puts it back.
    ipr = _netlink.open_route()
    try:
        index = ipr.link_lookup(ifname=db.host_if)[0]
        _netlink.detach(ipr, index, "egress")
        drifted = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin).task()[
            "ansible_facts"]["microseg"]["drift"]
        assert drifted == [db.host_if]
    finally:
        fds = _loader.open_pinned_programs(pin)
        try:
            _netlink.attach(ipr, index, "egress", fds["microseg_to_container"],
                            _netlink.filter_name("microseg_to_container", pin))
        finally:
            for fd in fds.values():
                os.close(fd)
        ipr.close()

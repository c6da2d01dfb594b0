# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitor follows a resized session map (issue 22): microseg_program replaces the pin,
and recount, expiry, pressure and metrics move to the new map within two ticks."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab
from ansible_collections.ebpf.microseg.tests.harness.monitor_process import MonitorProcess

TICK = 0.25


def program(lab, pin, size):
    res = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": lab.bridge, "pin_path": pin, "session_map_size": size}}])
    assert res.rc == 0, res.stdout
    return res.task()


def session_map(pin):
    with _maps.PinnedMaps(pin, names=["session_map", "map_pressure_map"]) as pinned:
        return (pinned.info("session_map"), list(pinned.items("session_map")),
                pinned.pressure())


def metrics(monitor):
    body = urllib.request.urlopen(monitor.metrics_url, timeout=5).read().decode()
    families = dict((f.name, f) for f in text_string_to_metric_families(body))
    maxes = dict((s.labels["map"], s.value) for s in families["microseg_map_max_entries"].samples)
    return maxes["session_map"], families["microseg_sessions"].samples[0].value


def test_resized_session_map_is_followed_within_two_ticks():
    lab = Lab(subnet="198.18.113", names=("a", "b"))
    pin = new_pin_path("resize")
    monitor = None
    try:
        program(lab, pin, 4096)
        lab.wait_links()
        lab["b"].serve("tcp", 5432)
        lab["b"].serve("udp", 5353)
        monitor = MonitorProcess(pin, "--bridge", lab.bridge)
        monitor.wait_for("opened the data plane")
        for _i in range(3):
            assert lab["a"].probe("udp", lab["b"].address, 5353) == "ok"
        time.sleep(2 * TICK)
        assert metrics(monitor)[0] == 4096

        task = program(lab, pin, 8192)      # copies the sessions into a new, larger map
        assert "session_map" in task["maps_migrated"]
        monitor.wait_for("pinned maps replaced (session_map")
        # New flows land in the new map only; TCP ones close and must expire from it.
        for _i in range(5):
            assert lab["a"].probe("tcp", lab["b"].address, 5432) == "ok"
        info, entries, _pressure = session_map(pin)
        assert info["max_entries"] == 8192
        closed = [v for k, v in entries if k.protocol == 6 and
                  _abi.TCP_STATES[v.state] in ("TIME_WAIT", "CLOSE")]
        assert closed, "no closed TCP session in the new map"
        time.sleep(2 * TICK)
        maximum, live = metrics(monitor)
        _info, entries, pressure = session_map(pin)
        assert maximum == 8192
        assert abs(live - len(entries)) <= 2 and abs(pressure.total_sessions - len(entries)) <= 2
        # tcp-closed times out after 1 s in MonitorProcess: the new map's closed sessions go.
        deadline = time.monotonic() + 1.0 + 3 * TICK + 1.0
        while [v for k, v in session_map(pin)[1] if k.protocol == 6]:
            assert time.monotonic() < deadline, "closed sessions never expired from the new map"
            time.sleep(0.05)
        time.sleep(2 * TICK)
        _info, entries, pressure = session_map(pin)
        assert pressure.total_sessions == len(entries)
    finally:
        if monitor:
            monitor.terminate()
        lab.destroy(pin_path=pin)

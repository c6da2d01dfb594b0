# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enforcement is never absent while its processes restart.

The filters and pins are kernel objects: the monitor only follows new ports, and a program
upgrade replaces each filter in place (tc's replace is one netlink operation). While the
monitor is SIGKILLed and started again over its stale pid file, stopped and started as
`systemctl restart` does, and microseg_program re-runs with a newer BPF source, a thread
samples every port's tc filters and an established TCP flow keeps echoing.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.action.microseg_program import read_bpf_sources
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.monitor_process import MonitorProcess
from ansible_collections.ebpf.microseg.tests.harness.netlab import PROBE, Lab

SMALL = {"policy_map_size": 2048, "range_map_size": 1024, "session_map_size": 16384}
HOOKS = ("ingress", "egress")


@pytest.fixture
def host():
    lab = Lab(subnet="198.18.105", names=("web", "db"))
    pin = new_pin_path("restart")
    try:
        lab["db"].serve("tcp", 5432)
        lab["db"].serve("tcp", 80)
        lab.wait_links()
        yield lab, pin
    finally:
        lab.destroy(pin_path=pin)


def program_task(lab, pin, bpf_source=None):
    params = dict(SMALL, bridge=lab.bridge, pin_path=pin)
    if bpf_source:
        params["bpf_source"] = bpf_source
    return {"name": "program", "ebpf.microseg.microseg_program": params}


def policy_task(lab, pin):
    return {"name": "policy", "ebpf.microseg.microseg_policy": {
        "pin_path": pin, "state": "overridden",
        "segments": {"web": [lab["web"].address + "/32"], "db": [lab["db"].address + "/32"]},
        "default_action": {"egress": "deny", "ingress": "deny"},
        "rules": [{"name": "web-to-db", "direction": "both", "src": ["web"], "dst": ["db"],
                   "protocol": "tcp", "dst_ports": [5432], "action": "allow"}]}}


class FilterSampler(threading.Thread):
    """Reads our filter on every (port, hook) as fast as netlink answers, until stopped."""

    def __init__(self, lab, pin):
        threading.Thread.__init__(self)
        self.daemon = True
        self.ports = sorted(c.host_if for c in lab.containers.values())
        self.pin = pin
        self.samples = 0
        self.missing = []           # (seconds since start, port, hook)
        self.program_ids = set()
        self.running = threading.Event()
        self.running.set()
        self.error = None

    def run(self):
        ipr = _netlink.open_route()
        try:
            indexes = dict((port, ipr.link_lookup(ifname=port)[0]) for port in self.ports)
            started = time.monotonic()
            while self.running.is_set():
                for port in self.ports:
                    for hook in HOOKS:
                        ours = _netlink.our_filter(ipr, indexes[port], hook, self.pin)
                        if ours is None:
                            self.missing.append((round(time.monotonic() - started, 3),
                                                 port, hook))
                        else:
                            self.program_ids.add(ours["prog_id"])
                self.samples += 1
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc
        finally:
            ipr.close()

    def stop(self):
        self.running.clear()
        self.join(10)


class HeldFlow(threading.Thread):
    """web keeps one TCP connection to db:5432 and echoes a message every 20 ms."""

    def __init__(self, lab):
        threading.Thread.__init__(self)
        self.daemon = True
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab["web"].netns, sys.executable, PROBE, "hold",
             lab["db"].address, "5432"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            universal_newlines=True)
        self.connected = self.proc.stdout.readline().strip() == "connected"
        self.answers = []
        self.running = threading.Event()
        self.running.set()

    def run(self):
        count = 0
        while self.running.is_set():
            count += 1
            try:
                self.proc.stdin.write("m%d\n" % count)
                self.proc.stdin.flush()
                answer = self.proc.stdout.readline().strip()
            except (OSError, ValueError):
                answer = "broken"
            self.answers.append(answer)
            if answer != "ok":
                return
            time.sleep(0.02)

    def stop(self):
        self.running.clear()
        self.join(10)
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(5)


def newer_source():
    sources = read_bpf_sources()
    sources["microseg.bpf.c"] += "\n/* a newer release of the program: same maps, new text */\n"
    return sources


def test_no_port_is_unfiltered_and_the_flow_survives_restarts_and_an_upgrade(host):
    lab, pin = host
    first = run_playbook([program_task(lab, pin), policy_task(lab, pin)])
    assert first.rc == 0, first.stdout
    assert lab["web"].probe("tcp", lab["db"].address, 80, 0.5) == "fail"

    monitors = [MonitorProcess(pin, "--bridge", lab.bridge)]
    sampler = FilterSampler(lab, pin)
    flow = HeldFlow(lab)
    try:
        monitors[-1].wait_for("opened the data plane")
        assert flow.connected
        sampler.start()
        flow.start()
        time.sleep(0.5)

        # 1. SIGKILL: nothing is cleaned up, the pid file stays; a new monitor takes over.
        monitors[-1].stop(signal.SIGKILL)
        assert os.path.exists(monitors[-1].pid_file)
        time.sleep(0.5)
        monitors.append(MonitorProcess(pin, "--bridge", lab.bridge))
        monitors[-1].wait_for("opened the data plane")
        time.sleep(0.5)

        # 2. What `systemctl restart microseg-monitor` does: SIGTERM, wait, start.
        monitors[-1].stop(signal.SIGTERM)
        assert monitors[-1].proc.returncode == 0, monitors[-1].stderr
        monitors.append(MonitorProcess(pin, "--bridge", lab.bridge))
        monitors[-1].wait_for("opened the data plane")
        time.sleep(0.5)

        # 3. The role re-run after a collection upgrade: a newer source is compiled and
        # each filter is replaced in place, while the monitor runs.
        ids_before = set(sampler.program_ids)
        upgrade = run_playbook([program_task(lab, pin, newer_source())])
        assert upgrade.rc == 0, upgrade.stdout
        actions = upgrade.task()["actions"]
        kinds = [a["action"] for a in actions]
        assert "compile" in kinds and "migrate_maps" not in kinds, actions
        # Every port's filters replaced in place, none detached first.
        ours = sorted(c.host_if for c in lab.containers.values())
        assert sorted(a["interface"] for a in actions if a["action"] == "replace") == \
            sorted(ours * len(HOOKS)), actions
        assert not [a for a in actions if a.get("interface") in ours and
                    a["action"] in ("detach", "attach")], actions
        monitors[-1].wait_for("pinned programs changed")
        time.sleep(0.5)
    finally:
        sampler.stop()
        flow.stop()
        for monitor in monitors[:-1]:
            monitor.stop(signal.SIGTERM)
        monitors[-1].terminate()

    assert sampler.error is None, sampler.error
    assert sampler.samples > 100, sampler.samples
    assert sampler.missing == [], sampler.missing[:20]
    assert len(sampler.program_ids - ids_before) == 2, (ids_before, sampler.program_ids)
    assert len(flow.answers) > 50 and set(flow.answers) == {"ok"}, flow.answers[-5:]
    # Still enforcing, by the new program: the denied port stays denied.
    assert lab["web"].probe("tcp", lab["db"].address, 80, 0.5) == "fail"
    assert lab["web"].probe("tcp", lab["db"].address, 5432, 0.5) == "ok"

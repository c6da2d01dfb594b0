# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab fleet (lab/fleet.py) and the bridge_veth role, over real SSH.

A 2-host fleet with a private state directory and inventory; the role applied to both hosts
by ansible-playbook over SSH: changed, then idempotent, then a --check run that predicts a
change and makes none; real ICMP from h1/web to h2/db across the management network;
state absent; fleet down leaves no process, namespace, link or pin behind.
The fleet's names and addresses are fixed, so the test is skipped while a lab is up.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import subprocess
import time

import pytest

from ansible_collections.ebpf.microseg.tests.harness import ansible_runner
from ansible_collections.ebpf.microseg.tests.harness.lab_fleet import fleet_mod, lab_is_up

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NETPROBE = os.path.join(ROOT, "tests", "harness", "netprobe.py")


def _lab_links():
    out = subprocess.run(["ip", "-o", "link", "show"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n == fleet_mod.MGMT_BRIDGE or n.startswith("mslh")]


def _pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                if handle.read().split(") ", 1)[1][0] != "Z":
                    alive.append(pid)
        except (OSError, IndexError):
            continue
    return alive


@pytest.fixture
def fleet(tmp_path):
    if lab_is_up():
        pytest.skip("a lab fleet is up (mslab0 / msl-h*): run `lab/fleet.py down` first")
    lab = fleet_mod.Fleet(str(tmp_path / "state"), str(tmp_path / "inventory" / "hosts.yml"))
    try:
        yield lab
    finally:
        lab.down()


class Playbook:
    """ansible-playbook over SSH against the fleet's inventory, results as JSON."""

    def __init__(self, fleet, work):
        self.inventory = fleet.inventory
        self.work = str(work)
        self.path = os.path.join(self.work, "bridge_veth.yml")
        with open(self.path, "w") as handle:
            json.dump([{"name": "Containers on the lab hosts", "hosts": "microseg_hosts",
                        "gather_facts": False,
                        "roles": [{"role": "ebpf.microseg.bridge_veth"}]}], handle)

    def run(self, *args):
        env = ansible_runner._env(self.work, {"ANSIBLE_HOST_KEY_CHECKING": "False",
                                              "ANSIBLE_FORKS": "10"})
        cmd = [ansible_runner.ansible_bin("ansible-playbook"), "-i", self.inventory,
               self.path] + list(args)
        started = time.time()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, cwd=self.work, check=False)
        result = ansible_runner._parse(proc, time.time() - started)
        assert result.rc == 0, "ansible-playbook failed:\n%s\n%s" % (result.stdout, result.stderr)
        return result

    @staticmethod
    def changed(result):
        """{host: changed task count} from the play recap."""
        return dict((host, stats["changed"]) for host, stats in result.data["stats"].items())


def _netns(lab, host):
    out = lab.exec(host, ["ip", "netns", "list"], check=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def _host_links(lab, host):
    out = lab.exec(host, ["ip", "-o", "link", "show"], check=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def test_fleet_and_bridge_veth_over_ssh(fleet, tmp_path):
    started = time.time()
    pins_before = sorted(os.listdir("/sys/fs/bpf"))
    fleet.up(2)
    with open(fleet.inventory) as handle:
        inventory = json.loads(handle.read().split("\n", 1)[1])   # JSON after one comment
    hosts = inventory["microseg_hosts"]["hosts"]
    assert sorted(hosts) == ["h1", "h2"]
    assert hosts["h2"]["ansible_host"] == "198.18.0.12"
    assert hosts["h2"]["bridge_veth_bridges"] == [{"name": "msbr0", "address": "198.18.12.1/24"}]
    assert [c["address"] for c in hosts["h2"]["bridge_veth_containers"]] == \
        ["198.18.12.10/24", "198.18.12.20/24", "198.18.12.30/24"]
    assert set(fleet.pids()) == set(["h1", "h2"])

    # Each host has its own bpffs and /run/netns: nothing shows in the root namespace.
    probe = fleet.exec("h1", ["sh", "-c", "ip netns add msl-probe && ip netns list && "
                                          "ip netns del msl-probe && stat -f -c %T /sys/fs/bpf"],
                       check=True).stdout
    assert "msl-probe" in probe and "bpf_fs" in probe
    assert "msl-probe" not in subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                                             universal_newlines=True, check=False).stdout

    play = Playbook(fleet, tmp_path)
    first = play.run()
    assert play.changed(first) == {"h1": 1, "h2": 1}
    for host in ("h1", "h2"):
        assert _netns(fleet, host) == ["db", "other", "web"]
        assert set(["msbr0", "ms-web", "ms-db", "ms-other"]) <= set(_host_links(fleet, host))

    second = play.run()
    assert play.changed(second) == {"h1": 0, "h2": 0}, second.stdout

    # --check with a changed input: predicts a change, changes nothing.
    extra = json.dumps({"bridge_veth_containers": [
        {"name": "web", "bridge": "msbr0", "address": "198.18.11.10/24",
         "gateway": "198.18.11.1"},
        {"name": "extra", "bridge": "msbr0", "address": "198.18.11.40/24"}]})
    check = play.run("--check", "--limit", "h1", "-e", extra)
    assert play.changed(check) == {"h1": 1}
    assert _netns(fleet, "h1") == ["db", "other", "web"]
    assert "ms-extra" not in _host_links(fleet, "h1")

    # Real ICMP across the fleet: h1/web -> h1 -> management network -> h2 -> h2/db, and back.
    probe = fleet.exec("h1", ["python3", NETPROBE, "icmp", "198.18.12.20", "2"], container="web")
    if probe.stdout.strip() != "ok":
        tables = subprocess.run(["nft", "list", "tables"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, check=False).stdout
        pytest.fail("h1/web -> h2/db (198.18.12.20): %r %r; root namespace nft tables "
                    "(a bridge-family forward chain also filters mslab0): %s"
                    % (probe.stdout, probe.stderr, tables))
    assert fleet.exec("h2", ["python3", NETPROBE, "icmp", "198.18.11.10", "2"],
                      container="db").stdout.strip() == "ok"

    # A server inside a container: down must stop it too, even once its namespace is unnamed.
    server = subprocess.Popen(fleet.command("h2", ["python3", NETPROBE, "serve", "tcp", "5432"],
                                            container="db"),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, start_new_session=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        assert fleet.exec("h1", ["python3", NETPROBE, "tcp", "198.18.12.20", "5432", "2"],
                          container="web").stdout.strip() == "ok"
        inside = fleet.pids(every=True)
        assert server.pid in inside["h2"]

        gone = play.run("-e", "bridge_veth_state=absent")
        assert play.changed(gone) == {"h1": 1, "h2": 1}
        for host in ("h1", "h2"):
            assert _netns(fleet, host) == []
            links = _host_links(fleet, host)
            assert not [n for n in links if n.startswith("ms")], links
        assert play.changed(play.run("-e", "bridge_veth_state=absent")) == {"h1": 0, "h2": 0}
        assert server.poll() is None   # still running in its (now unnamed) namespace

        victims = set(p for pids in fleet.pids(every=True).values() for p in pids)
        fleet.down()
        server.wait(timeout=5)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()

    assert _pids_alive(victims) == []
    assert _lab_links() == []
    netns = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                           universal_newlines=True, check=False).stdout
    assert "msl-h" not in netns
    assert sorted(os.listdir("/sys/fs/bpf")) == pins_before
    assert not os.path.exists(fleet.state_dir) and not os.path.exists(fleet.inventory)
    # ansible's ControlMaster connections saw their sshd go and ended.
    deadline = time.time() + 3
    while time.time() < deadline:
        ss = subprocess.run(["ss", "-Htn", "dst", "198.18.0.0/24"], stdout=subprocess.PIPE,
                            universal_newlines=True, check=False).stdout
        if not ss.strip():
            break
        time.sleep(0.1)
    assert not ss.strip(), ss
    assert time.time() - started < 90

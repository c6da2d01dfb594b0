# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The record the modules keep for the boot restore, and microseg-restore run from it.

A reboot is simulated on this host by what it does to the data plane: every filter and pin
is gone, the record on disk stays. (The real reboot, in a qemu guest with systemd and podman,
is the molecule vm scenario.)
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import (
    collections_path, run_playbook)
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab

RESTORE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "files", "microseg-restore")
SMALL = {"policy_map_size": 2048, "range_map_size": 1024, "session_map_size": 16384}


@pytest.fixture
def host():
    lab = Lab(subnet="198.18.104", names=("web", "db"))
    pin = new_pin_path("boot")
    state_dir = tempfile.mkdtemp(prefix="microseg-state-")
    servers = []
    try:
        servers.append(lab["db"].serve("tcp", 5432))
        servers.append(lab["db"].serve("tcp", 80))
        lab.wait_links()
        yield lab, pin, state_dir
    finally:
        lab.destroy(pin_path=pin)
        shutil.rmtree(state_dir, ignore_errors=True)


def converge_tasks(lab, pin, state_dir):
    db = lab["db"].address + "/32"
    return [
        {"name": "program", "ebpf.microseg.microseg_program":
            dict(SMALL, bridge=lab.bridge, pin_path=pin, state_dir=state_dir)},
        {"name": "policy", "ebpf.microseg.microseg_policy": {
            "pin_path": pin, "state_dir": state_dir, "state": "overridden",
            "segments": {"web": [lab["web"].address + "/32"], "db": [db]},
            "default_action": {"egress": "deny", "ingress": "deny"},
            "rules": [{"name": "web-to-db", "direction": "both", "src": ["web"],
                       "dst": ["db"], "protocol": "tcp", "dst_ports": [5432],
                       "action": "allow"}]}},
    ]


def verdicts(lab):
    return {"5432": lab["web"].probe("tcp", lab["db"].address, 5432, 0.5),
            "80": lab["web"].probe("tcp", lab["db"].address, 80, 0.5)}


def lose_data_plane(lab, pin):
    """What a reboot leaves: no filter on any port, an empty pin directory."""
    lab._detach_programs()  # pylint: disable=protected-access
    _loader.remove_pins(pin)


def run_restore(state_dir, *extra):
    env = dict(os.environ, PYTHONPATH=collections_path())
    return subprocess.run(["/usr/bin/python3", RESTORE, "--state-dir", state_dir] + list(extra),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, env=env, check=False)


def test_converge_records_then_restore_enforces_and_the_next_run_changes_nothing(host):
    lab, pin, state_dir = host
    record_dir = _saved_state.instance_dir(state_dir, pin)

    # Check mode on a fresh host predicts the records and writes none.
    predicted = run_playbook(converge_tasks(lab, pin, state_dir), check=True)
    assert predicted.rc == 0, predicted.stdout
    assert {"action": "save_state", "path": record_dir} in predicted.task(0)["actions"]
    assert predicted.task(1)["saved_state"] == record_dir
    assert not os.path.exists(record_dir)

    first = run_playbook(converge_tasks(lab, pin, state_dir))
    assert first.rc == 0, first.stdout
    assert first.task(0)["changed"] and first.task(1)["changed"]
    program = json.load(open(os.path.join(record_dir, "program.json")))
    policy = json.load(open(os.path.join(record_dir, "policy.json")))
    assert program["params"]["bridge"] == lab.bridge
    # The whole program is recorded, lib/ headers included: the restore compiles from it.
    assert set(program["sources"]) == {
        "microseg.bpf.c", "microseg.h", "lib/maps.h", "lib/stats.h", "lib/flow.h",
        "lib/parse.h", "lib/policy.h", "lib/log.h", "lib/session.h", "lib/guards.h"}
    assert [r["name"] for r in policy["policy"]["rules"]] == ["web-to-db"]
    assert policy["generation"] == first.task(1)["generation"]
    assert oct(os.stat(os.path.join(record_dir, "policy.json")).st_mode & 0o777) == "0o600"
    assert verdicts(lab) == {"5432": "ok", "80": "fail"}

    again = run_playbook(converge_tasks(lab, pin, state_dir))
    assert [t["changed"] for t in again.tasks()] == [False, False], again.stdout

    lose_data_plane(lab, pin)
    assert verdicts(lab) == {"5432": "ok", "80": "ok"}      # fails open, as after a reboot

    restored = run_restore(state_dir)
    assert restored.returncode == 0, restored.stdout
    assert "program: compiled" in restored.stdout
    assert "policy: generation 1, 1 rules" in restored.stdout
    assert verdicts(lab) == {"5432": "ok", "80": "fail"}
    outcome = json.load(open(os.path.join(record_dir, "restore.json")))
    assert outcome["result"] == "ok" and outcome["pin_path"] == pin
    assert outcome["kernel"] == os.uname()[2] and outcome["seconds"] > 0
    assert sorted(outcome["steps"][0]["interfaces"]) == sorted(
        c.host_if for c in lab.containers.values())

    facts = run_playbook([{"ebpf.microseg.microseg_facts": {"pin_path": pin,
                                                            "state_dir": state_dir}}])
    boot = facts.task()["ansible_facts"]["microseg"]["boot_restore"]
    assert boot["result"] == "ok" and boot["this_boot"] is True, boot
    assert facts.task()["ansible_facts"]["microseg"]["saved_state"]["policy_generation"] == \
        policy["generation"]

    # The restore carried the input's identity over: Ansible finds nothing to do.
    after_restore = run_playbook(converge_tasks(lab, pin, state_dir))
    assert [t["changed"] for t in after_restore.tasks()] == [False, False], \
        after_restore.stdout

    # A second restore on a data plane that is in place changes nothing in the kernel.
    ids = _program_ids(lab)
    assert run_restore(state_dir).returncode == 0
    assert _program_ids(lab) == ids


def _program_ids(lab):
    ipr = _netlink.open_route()
    try:
        return dict((ctr.host_if, _netlink.our_filter(
            ipr, ipr.link_lookup(ifname=ctr.host_if)[0], "ingress")["prog_id"])
            for ctr in lab.containers.values())
    finally:
        ipr.close()


def test_restore_before_the_bridge_exists_loads_and_converges(host):
    """At boot the container runtime has not made its bridge yet: the program is pinned
    and the policy converged; the ports are the monitor's to attach when they appear."""
    lab, pin, state_dir = host
    assert run_playbook(converge_tasks(lab, pin, state_dir)).rc == 0
    record = os.path.join(_saved_state.instance_dir(state_dir, pin), "program.json")
    saved = json.load(open(record))
    saved["params"]["bridge"] = lab.tag + "gone"
    saved["digest"] = "edited"
    _saved_state.write_json(record, saved)
    lose_data_plane(lab, pin)

    restored = run_restore(state_dir)
    assert restored.returncode == 0, restored.stdout
    assert "attached to no interface yet (selection: bridge %sgone" % lab.tag in restored.stdout
    assert os.path.exists(os.path.join(pin, "config_map"))
    meta = _loader.read_meta(pin)
    assert meta["selection"]["bridge"] == lab.tag + "gone"


def test_a_broken_record_fails_loudly_and_is_reported(host):
    lab, pin, state_dir = host
    assert run_playbook(converge_tasks(lab, pin, state_dir)).rc == 0
    record_dir = _saved_state.instance_dir(state_dir, pin)
    with open(os.path.join(record_dir, "policy.json"), "w") as handle:
        handle.write("{not json")
    lose_data_plane(lab, pin)

    restored = run_restore(state_dir)
    assert restored.returncode == 1, restored.stdout
    assert "FAILED: SavedStateError" in restored.stdout and "policy.json" in restored.stdout
    outcome = json.load(open(os.path.join(record_dir, "restore.json")))
    assert outcome["result"] == "failed" and "not valid JSON" in outcome["message"]

    assert run_restore(state_dir, "--pin-path", pin + "-other").returncode == 1
    empty = tempfile.mkdtemp(prefix="microseg-state-")
    try:
        nothing = run_restore(empty)
        assert nothing.returncode == 0 and "nothing to restore" in nothing.stdout
    finally:
        os.rmdir(empty)


def test_absent_removes_the_records(host):
    lab, pin, state_dir = host
    assert run_playbook(converge_tasks(lab, pin, state_dir)).rc == 0
    record_dir = _saved_state.instance_dir(state_dir, pin)
    assert os.path.isdir(record_dir)
    absent = [{"ebpf.microseg.microseg_program": {"pin_path": pin, "state": "absent",
                                                  "state_dir": state_dir}}]
    predicted = run_playbook(absent, check=True)
    assert {"action": "remove_saved_state", "path": record_dir} in predicted.task()["actions"]
    assert os.path.isdir(record_dir)
    gone = run_playbook(absent)
    assert gone.rc == 0 and gone.task()["changed"], gone.stdout
    assert not os.path.exists(record_dir) and not os.path.exists(state_dir)
    os.makedirs(state_dir)          # for the fixture's cleanup

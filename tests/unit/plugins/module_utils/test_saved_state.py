# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot restore's records: where they go, when a run must write them, atomic writes."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os

import pytest
from hypothesis import given, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state

SOURCES = {"microseg.bpf.c": "int x;", "microseg.h": "#define Y 1"}


def params(**extra):
    out = {"pin_path": "/sys/fs/bpf/microseg", "bridge": "br0", "interfaces": [],
           "state": "present", "bpf_source": SOURCES, "session_map_size": 1000}
    out.update(extra)
    return out


def test_pin_ids_keep_instances_apart():
    assert _saved_state.pin_id("/sys/fs/bpf/microseg") == "sys-fs-bpf-microseg"
    assert _saved_state.pin_id("/sys/fs/bpf/microseg/") == "sys-fs-bpf-microseg"
    assert _saved_state.pin_id("/sys/fs/bpf/other") != _saved_state.pin_id("/sys/fs/bpf/microseg")


@given(st.lists(st.text(alphabet="abc_-", min_size=1, max_size=6), min_size=1, max_size=4))
def test_pin_id_is_one_path_component(parts):
    pin_id = _saved_state.pin_id("/" + "/".join(parts))
    assert "/" not in pin_id and pin_id not in ("", ".", "..")


def test_the_record_holds_what_was_converged_not_how_the_run_was_asked(tmp_path):
    record = _saved_state.program_record(params(), SOURCES)
    assert "state" not in record["params"] and "bpf_source" not in record["params"]
    assert record["sources"] == SOURCES
    same = _saved_state.program_record(params(state="absent"), SOURCES)
    assert same["digest"] == record["digest"]
    other = _saved_state.program_record(params(session_map_size=2000), SOURCES)
    assert other["digest"] != record["digest"]
    newer = _saved_state.program_record(params(), dict(SOURCES, **{"microseg.h": "#define Y 2"}))
    assert newer["digest"] != record["digest"]


def test_needs_save_until_written_then_not(tmp_path):
    state_dir = str(tmp_path / "state")
    record = _saved_state.program_record(params(), SOURCES)
    assert _saved_state.program_needs_save(state_dir, "/sys/fs/bpf/microseg", record)
    _saved_state.save_program(state_dir, "/sys/fs/bpf/microseg", record)
    assert not _saved_state.program_needs_save(state_dir, "/sys/fs/bpf/microseg", record)
    path = os.path.join(state_dir, "instances", "sys-fs-bpf-microseg", "program.json")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert json.load(open(path)) == record
    # A damaged record is rewritten, not trusted and not a crash.
    with open(path, "w") as handle:
        handle.write("{half")
    assert _saved_state.program_needs_save(state_dir, "/sys/fs/bpf/microseg", record)
    with pytest.raises(_saved_state.SavedStateError, match="not valid JSON"):
        _saved_state.program_saved(state_dir, "/sys/fs/bpf/microseg")


def test_an_interrupted_write_leaves_the_old_record(tmp_path, monkeypatch):
    path = str(tmp_path / "policy.json")
    _saved_state.write_json(path, {"generation": 1})

    def broken_rename(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError):
        _saved_state.write_json(path, {"generation": 2})
    monkeypatch.undo()
    assert json.load(open(path)) == {"generation": 1}
    assert os.listdir(str(tmp_path)) == ["policy.json"]      # no temporary file left


def test_policy_digest_and_removal(tmp_path):
    state_dir = str(tmp_path / "state")
    pin = "/sys/fs/bpf/microseg"
    assert _saved_state.saved_policy_digest(state_dir, pin) is None
    document = {"rules": [{"name": "a"}], "segments": {}, "default_action":
                {"egress": "deny", "ingress": "deny"}}
    _saved_state.save_policy(state_dir, pin, _saved_state.policy_record(document, "abc", 3))
    assert _saved_state.saved_policy_digest(state_dir, pin) == "abc"
    summary = _saved_state.summary(state_dir, pin)
    assert summary["policy_generation"] == 3 and summary["policy_rules"] == 1
    assert not summary["program"]
    assert _saved_state.instances(state_dir) == []          # no program record: not restorable
    _saved_state.save_program(state_dir, pin, _saved_state.program_record(params(), SOURCES))
    assert _saved_state.instances(state_dir) == [_saved_state.instance_dir(state_dir, pin)]
    assert _saved_state.remove(state_dir, pin)
    assert not os.path.exists(state_dir)                    # empty parents go too
    assert not _saved_state.remove(state_dir, pin)


def test_another_instance_keeps_the_state_dir(tmp_path):
    state_dir = str(tmp_path / "state")
    for pin in ("/sys/fs/bpf/a", "/sys/fs/bpf/b"):
        _saved_state.save_program(state_dir, pin, _saved_state.program_record(
            params(pin_path=pin), SOURCES))
    _saved_state.remove(state_dir, "/sys/fs/bpf/a")
    assert _saved_state.instances(state_dir) == [
        _saved_state.instance_dir(state_dir, "/sys/fs/bpf/b")]


def test_restore_result_says_whether_it_is_from_this_boot(tmp_path):
    state_dir = str(tmp_path / "state")
    pin = "/sys/fs/bpf/microseg"
    assert _saved_state.restore_result(state_dir, pin) is None
    with open("/proc/sys/kernel/random/boot_id") as handle:
        boot_id = handle.read().strip()
    instance = _saved_state.instance_dir(state_dir, pin)
    _saved_state.save_restore_result(instance, {"result": "ok", "boot_id": boot_id})
    assert _saved_state.restore_result(state_dir, pin)["this_boot"] is True
    _saved_state.save_restore_result(instance, {"result": "ok", "boot_id": "earlier"})
    assert _saved_state.restore_result(state_dir, pin)["this_boot"] is False

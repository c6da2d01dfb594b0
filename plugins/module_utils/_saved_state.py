# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host converged, on disk, so that enforcement comes back at boot without Ansible.

bpffs is empty after a reboot. microseg_program and microseg_policy write what they left in
the kernel here (after the kernel side succeeded, never in check mode), and the boot restore
(_restore.py, run by microseg.service) reads it back:

  STATE_DIR/instances/<pin id>/program.json   program parameters and the BPF C source
  STATE_DIR/instances/<pin id>/policy.json    the policy the host holds (normalized rules,
                                              segments, default actions), its digest and
                                              the rules' policy ids
  STATE_DIR/instances/<pin id>/restore.json   the last boot restore: result, times, steps

<pin id> is the pin path with its slashes turned to dashes (/sys/fs/bpf/microseg ->
sys-fs-bpf-microseg), so several instances on one host keep separate records.

Every write is atomic: a temporary file in the same directory, fsync, rename, fsync of the
directory. A crash leaves the old record or the new one, never half of one.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import hashlib
import json
import os
import shutil
import tempfile

DEFAULT_STATE_DIR = "/var/lib/microseg"
STATE_DIR_ENV = "MICROSEG_STATE_DIR"
FORMAT_VERSION = 1

PROGRAM_FILE = "program.json"
POLICY_FILE = "policy.json"
RESTORE_FILE = "restore.json"

# microseg_program parameters that say what is compiled and where it is attached; the rest
# (state, bpf_source, state_dir) are how the run was asked for, not what it left.
NOT_SAVED = ("state", "bpf_source", "state_dir")


class SavedStateError(Exception):
    pass


def pin_id(pin_path):
    parts = [p for p in os.path.normpath(pin_path).split("/") if p]
    return "-".join(parts) or "root"


def instance_dir(state_dir, pin_path):
    return os.path.join(state_dir, "instances", pin_id(pin_path))


def instances(state_dir):
    """Instance directories under state_dir that hold a program record, sorted."""
    root = os.path.join(state_dir, "instances")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [os.path.join(root, name) for name in names
            if os.path.isfile(os.path.join(root, name, PROGRAM_FILE))]


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, document):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, sort_keys=True, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def read_json(path):
    """The document at path; None when there is none. A damaged file raises SavedStateError."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError):
        if os.path.exists(path):
            raise
        return None
    except ValueError as exc:
        raise SavedStateError("%s is not valid JSON: %s" % (path, exc))


def _digest(value):
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the program -----------------------------------------------------------------------------
def program_record(params, sources):
    saved = dict((k, v) for k, v in params.items() if k not in NOT_SAVED)
    return {"version": FORMAT_VERSION, "params": saved, "sources": dict(sources or {}),
            "digest": _digest([saved, sources or {}])}


def program_saved(state_dir, pin_path):
    return read_json(os.path.join(instance_dir(state_dir, pin_path), PROGRAM_FILE))


def program_needs_save(state_dir, pin_path, record):
    try:
        saved = program_saved(state_dir, pin_path)
    except SavedStateError:
        return True
    return not saved or saved.get("digest") != record["digest"]


def save_program(state_dir, pin_path, record):
    write_json(os.path.join(instance_dir(state_dir, pin_path), PROGRAM_FILE), record)


# -- the policy ------------------------------------------------------------------------------
def policy_record(document, input_digest, generation, rule_ids=None):
    """document: rules, segments, default_action as the host holds them (normalized).

    rule_ids: {rule name: policy id} the kernel gave them, which the restored policy keeps
    (a record written before rule_ids existed has none: its ids were the crc32 of the
    names, which is what a converge without a table gives them).
    """
    held = {"rules": document.get("rules", []), "segments": document.get("segments", {}),
            "default_action": document.get("default_action")}
    if document.get("tiers"):
        held["tiers"] = list(document["tiers"])
    record = {"version": FORMAT_VERSION, "policy": held, "input_digest": input_digest,
              "generation": generation}
    if rule_ids is not None:
        record["rule_ids"] = dict(rule_ids)
    return record


def policy_saved(state_dir, pin_path):
    return read_json(os.path.join(instance_dir(state_dir, pin_path), POLICY_FILE))


def saved_policy_digest(state_dir, pin_path):
    """The input digest of the saved policy; None when there is none (or it is damaged)."""
    try:
        saved = policy_saved(state_dir, pin_path)
    except (SavedStateError, IOError, OSError):
        return None
    return (saved or {}).get("input_digest")


def save_policy(state_dir, pin_path, record):
    write_json(os.path.join(instance_dir(state_dir, pin_path), POLICY_FILE), record)


# -- the boot restore ------------------------------------------------------------------------
def save_restore_result(instance, result):
    write_json(os.path.join(instance, RESTORE_FILE), result)


def boot_id():
    """This boot's id (a restore result from another boot says nothing about this one)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


def restore_result(state_dir, pin_path):
    """The last boot restore of the instance, with this_boot: whether it ran since the host
    last booted (a restore.json from an earlier boot says nothing about this one)."""
    try:
        outcome = read_json(os.path.join(instance_dir(state_dir, pin_path), RESTORE_FILE))
    except (SavedStateError, IOError, OSError) as exc:
        return {"result": "unreadable", "message": str(exc), "this_boot": False}
    if outcome is None:
        return None
    this_boot = boot_id()
    outcome["this_boot"] = bool(this_boot) and outcome.get("boot_id") == this_boot
    return outcome


# -- removal ---------------------------------------------------------------------------------
def has_saved(state_dir, pin_path):
    return os.path.isdir(instance_dir(state_dir, pin_path))


def remove(state_dir, pin_path):
    """Remove the instance's records; then instances/ and state_dir itself when left empty."""
    directory = instance_dir(state_dir, pin_path)
    if not os.path.isdir(directory):
        return False
    shutil.rmtree(directory)
    for parent in (os.path.dirname(directory), state_dir):
        try:
            os.rmdir(parent)
        except OSError:
            break
    return True


def summary(state_dir, pin_path):
    """For microseg_facts: what is saved for this instance and the last boot restore."""
    directory = instance_dir(state_dir, pin_path)
    out = {"path": directory, "program": False, "policy_generation": None}
    try:
        out["program"] = bool(program_saved(state_dir, pin_path))
        policy = policy_saved(state_dir, pin_path)
        out["policy_generation"] = (policy or {}).get("generation")
        out["policy_rules"] = len(((policy or {}).get("policy") or {}).get("rules") or [])
    except (SavedStateError, IOError, OSError) as exc:
        out["error"] = str(exc)
    return out

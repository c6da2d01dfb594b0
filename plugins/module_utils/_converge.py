# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_policy: gather -> compare -> plan -> apply, with an atomic switch.

The policy maps hold two copies of the policy, told apart by their policy set (the
policy_set byte of exact keys, bit 1 of first-stage LPM classes, bit 31 of later classes).
The data plane reads the set named by the low bit of config.policy_epoch. A converge
clears the inactive set, writes the new policy there, then writes the config once: the
epoch goes up by one, which both selects the new set and makes every session decided
under the old one re-evaluate on its next packet. Killed before that write, the old policy
is fully in force and the next run clears the half-written set first.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import fcntl
import hashlib
import os
import struct
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model
from ansible_collections.ebpf.microseg.plugins.module_utils import _pinned_blob

POLICY_MAPS = ("policy_map", "ip_range_map", "local_range_map", "port_range_map",
               "sport_range_map")
SOURCE_MAP = "policy_source"   # listed in _loader.OTHER_PINS so state=absent removes it
SOURCE_CHUNK = 1024 * 1024
SOURCE_MAX_CHUNKS = 64
LOCK_DIR = "/run/lock"


class ConvergeError(Exception):
    pass


# ---- which policy set an entry belongs to ----------------------------------------
# Entries stay packed bytes from the kernel read to the kernel write: a converge of
# 110,000 rules moves 170,000+ entries per set, and a mirror object per entry costs more
# than every syscall of the converge together.

_U32 = struct.Struct("=I")
_POLICY_SET_AT = _maps.PolicyKey.policy_set.offset
_HITS_AT = _maps.PolicyValue.hit_count.offset        # hit_count, last_hit: the value's tail
_CLASS_AT = _maps.LpmKey.class_id.offset
_NEXT_CLASS_AT = _maps.RangeValue.next_class.offset
# ip_range_map holds the first step (the set is bit 1 of MS_LPM_ROOT_CLASS); the other
# maps hold the compiler's later classes, whose set is bit MS_LPM_CLASS_SET_BIT.
_ROOT_SET_MASK = _abi.ms_lpm_root_class(1, 0)
_LATER_SET_MASK = 1 << _abi.MS_LPM_CLASS_SET_BIT
if not _CLASS_AT == _maps.PortLpmKey.class_id.offset == _maps.SportLpmKey.class_id.offset:
    raise ImportError("the LPM keys no longer share the class_id offset _converge reads")


def entry_set(map_name, key):
    """The policy set (0 or 1) of a packed key."""
    if map_name == "policy_map":
        return key[_POLICY_SET_AT] & 1
    class_id = _U32.unpack_from(key, _CLASS_AT)[0]
    mask = _ROOT_SET_MASK if map_name == "ip_range_map" else _LATER_SET_MASK
    return 1 if class_id & mask else 0


def _without_set(map_name, key, value):
    """Packed key and value with the policy set masked out, to compare two generations.

    policy_map values also drop their hit counters, which the data plane keeps moving.
    """
    if map_name == "policy_map":
        return key[:_POLICY_SET_AT] + key[_POLICY_SET_AT + 1:], value[:_HITS_AT]
    mask = _ROOT_SET_MASK if map_name == "ip_range_map" else _LATER_SET_MASK
    class_id = _U32.unpack_from(key, _CLASS_AT)[0] & ~mask & 0xffffffff
    next_class = _U32.unpack_from(value, _NEXT_CLASS_AT)[0] & ~_LATER_SET_MASK & 0xffffffff
    return (key[:_CLASS_AT] + _U32.pack(class_id) + key[_CLASS_AT + 4:],
            value[:_NEXT_CLASS_AT] + _U32.pack(next_class) + value[_NEXT_CLASS_AT + 4:])


# ---- the policy source, kept with the maps -------------------------------------------
# The rules as written (normalized), zlib-compressed, in 1 MiB chunks of a hash map keyed
# (policy_set << 16 | chunk): what `gathered` returns and what the next run compares with.
# Beside rules, segments and default_action the document holds entry_counts, input_digest
# and rule_ids: {rule name: policy id}, the ids the set's entries carry, which the next
# converge keeps for the names it still has (_policy_model.assign_policy_ids).

def source_rule_ids(source):
    """{name: policy id} of a stored source document; None when there is none.

    A source written before rule_ids existed holds the ids every rule then had: the crc32
    of its name (policy_id_for), which were distinct, as the converge refused collisions.
    """
    if not isinstance(source, dict):
        return None
    table = source.get("rule_ids")
    if isinstance(table, dict):
        return table
    return dict((rule["name"], _policy_model.policy_id_for(rule["name"]))
                for rule in source.get("rules") or []
                if isinstance(rule, dict) and isinstance(rule.get("name"), str))


SOURCE = _pinned_blob.PinnedBlob(
    SOURCE_MAP, bpf.BPF_MAP_TYPE_HASH, SOURCE_CHUNK, max_chunks=SOURCE_MAX_CHUNKS, slots=2,
    flags=bpf.BPF_F_NO_PREALLOC,
    # Level 1: 6% bigger than level 6 at 110,000 rules, in a third of the time.
    zlib_level=1, json_options={"separators": (",", ":")})


def encode_source(document):
    """Compressed chunks; raises ConvergeError before anything is written if too big."""
    try:
        return SOURCE.encode(document)
    except _pinned_blob.BlobTooLarge as exc:
        raise ConvergeError("the policy is %d bytes compressed; at most %d fit beside the maps"
                            % (exc.size, exc.capacity))


def read_source(pin_path, policy_set):
    """The rules (as the user wrote them, normalized) that policy set `policy_set` holds."""
    return SOURCE.read(pin_path, policy_set)


def write_source(pin_path, policy_set, chunks):
    SOURCE.write(pin_path, chunks, policy_set)


# ---- lock --------------------------------------------------------------------------------

class HostLockBusy(Exception):
    pass


class HostLock:
    """Serializes every read-modify-write of one pin directory's shared maps (config_map,
    microseg_meta, endpoint_map) on this host: policy converges, program runs, the monitor.

    With timeout (seconds), entering raises HostLockBusy instead of waiting longer.
    """

    def __init__(self, pin_path, timeout=None):
        self.timeout = timeout
        st = os.stat(pin_path)
        digest = hashlib.sha1(("%d:%s" % (st.st_dev, pin_path)).encode()).hexdigest()[:16]
        if not os.path.isdir(LOCK_DIR):
            os.makedirs(LOCK_DIR)
        self.path = os.path.join(LOCK_DIR, "microseg-policy-%s.lock" % digest)
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "w")
        if self.timeout is None:
            fcntl.flock(self.handle, fcntl.LOCK_EX)
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except (IOError, OSError):
                if time.monotonic() >= deadline:
                    self.handle.close()
                    raise HostLockBusy("%s is held by another run" % self.path)
                time.sleep(0.05)

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


# ---- gather ------------------------------------------------------------------------------

def gather(pinned, pin_path):
    """What the host holds: generation, active set, defaults, source, entries per set.

    entries[map][set] lists packed (key, value) pairs.
    """
    config = pinned.config()
    active = config.policy_epoch & 1
    entries = {}
    counts = {0: {}, 1: {}}
    for name in POLICY_MAPS:
        entries[name] = {0: [], 1: []}
        for key, value in pinned.raw_items(name):
            entries[name][entry_set(name, key)].append((key, value))
        for policy_set in (0, 1):
            counts[policy_set][name] = len(entries[name][policy_set])
    source = read_source(pin_path, active)
    return {
        "generation": config.policy_epoch,
        "active_set": active,
        "default_action": {
            "egress": _abi.ACTION_NAMES.get(config.default_action[0], "allow"),
            "ingress": _abi.ACTION_NAMES.get(config.default_action[1], "allow"),
        },
        "source": source,
        "entries": entries,
        "counts": counts,
        "max_entries": dict((name, pinned.info(name)["max_entries"]) for name in POLICY_MAPS),
    }


# ---- compare -----------------------------------------------------------------------------

def entry_changes(current_entries, compiled):
    """Per map: entries added, removed, changed between the active set and the new one."""
    out = {}
    for name in POLICY_MAPS:
        old = dict(_without_set(name, k, v) for k, v in current_entries[name])
        new = dict(_without_set(name, k, v) for k, v in compiled.packed[name])
        added = sum(1 for k in new if k not in old)
        removed = sum(1 for k in old if k not in new)
        changed = sum(1 for k in new if k in old and old[k] != new[k])
        out[name] = {"added": added, "removed": removed, "changed": changed,
                     "entries": len(new)}
    return out


def capacity_problems(current, compiled):
    """During the switch a map holds the active set and the new one side by side."""
    problems = []
    active = current["active_set"]
    for name in POLICY_MAPS:
        need = len(compiled.packed[name])
        held = current["counts"][active][name]
        limit = current["max_entries"][name]
        if need + held > limit:
            problems.append("%s: the new policy needs %d entries and the active one holds %d; "
                            "both must fit during the switch but max_entries is %d (raise the "
                            "size in microseg_program)" % (name, need, held, limit))
    return problems


# ---- apply -------------------------------------------------------------------------------

def clear_set(pinned, entries, policy_set):
    removed = 0
    for name in POLICY_MAPS:
        keys = [k for k, _v in entries[name][policy_set]]
        if keys:
            removed += pinned.delete_many(name, keys)
    return removed


def fault_point(name):
    """Crash-safety tests stop a converge here (MICROSEG_FAULT_PAUSE=name) and SIGKILL it.

    The marker file tells the test the process has arrived; nothing else changes.
    """
    if os.environ.get("MICROSEG_FAULT_PAUSE") != name:
        return
    with open(os.environ["MICROSEG_FAULT_MARKER"], "w") as handle:
        handle.write(name)
    time.sleep(600)


def write_set(pinned, compiled):
    written = 0
    for name in POLICY_MAPS:
        pairs = compiled.packed[name]
        if pairs:
            written += pinned.update_packed(name, pairs)
            fault_point("mid_write")
    return written


def fresh_ids(previous, ids):
    """The policy ids of ids ({name: id}) that are new to their name: the name was not in
    previous (the table the host held), or held another id. Their rule_stats entries, if
    any, are an earlier rule's: the rule that had the id before it was freed.

    Without a previous table (no source beside the maps) only ids other than the name's
    crc32 count: before tables, a name's id was its crc32 and its counters were its own.
    """
    if previous is None:
        return set(pid for name, pid in ids.items()
                   if pid != _policy_model.policy_id_for(name))
    return set(pid for name, pid in ids.items() if previous.get(name) != pid)


def reset_rule_stats(pin_path, policy_ids):
    """Delete the rule_stats entries of policy_ids (a set); how many there were.

    One read of the map's keys (it holds at most rule_stats_size), one batch delete.
    """
    if not policy_ids or not os.path.exists(os.path.join(pin_path, "rule_stats_map")):
        return 0
    with _maps.PinnedMaps(pin_path, names=["rule_stats_map"]) as pinned:
        keys = []
        for raw_keys, _values, got in pinned.raw_batches("rule_stats_map"):
            keys.extend(_U32.pack(pid) for (pid,) in _U32.iter_unpack(raw_keys[:got * 4])
                        if pid in policy_ids)
        return pinned.delete_many("rule_stats_map", keys) if keys else 0


def switch(pinned, new_epoch, default_action):
    """The one write that puts the new policy in force."""
    config = pinned.config()
    config.policy_epoch = new_epoch
    config.default_action[0] = _abi.ACTIONS[default_action["egress"]]
    config.default_action[1] = _abi.ACTIONS[default_action["ingress"]]
    pinned.write_config(config)

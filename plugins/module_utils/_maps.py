# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ctypes mirrors of files/bpf/microseg.h and typed access to the pinned maps.

The C header is the single source of truth; tests/functional/test_layout.py compiles it
and checks every size and offset here against the compiler's. Its constants are in _abi.py.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import os
import socket
import struct

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _program_options

DEFAULT_PIN_PATH = "/sys/fs/bpf/microseg"


class _Struct(ctypes.Structure):
    """Base for the mirrors: bytes in and out, and a dict view for results."""

    def pack(self):
        return bytes(self)      # the buffer protocol: the struct's own bytes, one copy

    @classmethod
    def unpack(cls, data):
        return cls.from_buffer_copy(bytes(data)[:ctypes.sizeof(cls)])

    def as_dict(self):
        out = {}
        for field in self._fields_:
            value = getattr(self, field[0])
            if isinstance(value, ctypes.Array):
                value = list(value)
            out[field[0]] = value
        return out


class PolicyKey(_Struct):
    _fields_ = [
        ("src_ip", ctypes.c_uint32), ("dst_ip", ctypes.c_uint32),
        ("src_port", ctypes.c_uint16), ("dst_port", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8), ("direction", ctypes.c_uint8),
        ("policy_set", ctypes.c_uint8), ("pad", ctypes.c_uint8),
    ]


class PolicyValue(_Struct):
    _fields_ = [
        ("policy_id", ctypes.c_uint32), ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8), ("reserved", ctypes.c_uint16),
        ("hit_count", ctypes.c_uint64), ("last_hit", ctypes.c_uint64),
    ]


class LpmKey(_Struct):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32), ("class_id", ctypes.c_uint32), ("ip", ctypes.c_uint32),
    ]


class PortLpmKey(_Struct):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32), ("class_id", ctypes.c_uint32),
        ("protocol", ctypes.c_uint8), ("port", ctypes.c_uint8 * 2), ("pad", ctypes.c_uint8),
    ]


class SportLpmKey(_Struct):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32), ("class_id", ctypes.c_uint32),
        ("port", ctypes.c_uint8 * 2), ("pad", ctypes.c_uint8 * 2),
    ]


class RangeValue(_Struct):
    _fields_ = [
        ("policy_id", ctypes.c_uint32), ("action", ctypes.c_uint8),
        ("priority", ctypes.c_uint8), ("flags", ctypes.c_uint16),
        ("next_class", ctypes.c_uint32),
    ]


class SessionKey(_Struct):
    _fields_ = [
        ("src_ip", ctypes.c_uint32), ("dst_ip", ctypes.c_uint32),
        ("src_port", ctypes.c_uint16), ("dst_port", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8), ("padding", ctypes.c_uint8 * 3),
    ]


class SessionValue(_Struct):
    _fields_ = [
        ("session_id", ctypes.c_uint64), ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64), ("last_seen", ctypes.c_uint64),
        ("policy_id", ctypes.c_uint32), ("action", ctypes.c_uint8),
        ("state", ctypes.c_uint8), ("flags", ctypes.c_uint16),
        ("seq_init", ctypes.c_uint32), ("reserved_a", ctypes.c_uint32),
        ("policy_ver", ctypes.c_uint32), ("fin_seq_orig", ctypes.c_uint32),
        ("reserved_b", ctypes.c_uint32), ("parser", ctypes.c_uint16),
        ("direction", ctypes.c_uint8), ("reserved", ctypes.c_uint8),
        ("ifindex", ctypes.c_uint32), ("reserved2", ctypes.c_uint32),
    ]


class MapPressure(_Struct):
    _fields_ = [
        ("total_sessions", ctypes.c_uint64), ("evictions", ctypes.c_uint64),
        ("insertion_failures", ctypes.c_uint64), ("last_check", ctypes.c_uint64),
        ("pressure_level", ctypes.c_uint32), ("syn_sent_count", ctypes.c_uint32),
        ("decayed_at", ctypes.c_uint64),
    ]


class MicrosegConfig(_Struct):
    _fields_ = [
        ("policy_epoch", ctypes.c_uint32), ("default_action", ctypes.c_uint8 * 2),
        ("ipv6_mode", ctypes.c_uint8), ("other_l3_mode", ctypes.c_uint8),
        ("syn_flood_threshold", ctypes.c_uint32), ("pressure_warn_sessions", ctypes.c_uint32),
        ("pressure_crit_sessions", ctypes.c_uint32), ("session_max", ctypes.c_uint32),
        ("log_rate_per_sec", ctypes.c_uint32), ("flags", ctypes.c_uint32),
        ("endpoint_half_open_quota", ctypes.c_uint32), ("endpoint_session_quota", ctypes.c_uint32),
        ("degraded_passthrough", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3),
    ]


class EndpointUsage(_Struct):
    _fields_ = [
        ("sessions", ctypes.c_uint64), ("half_open", ctypes.c_uint64),
        ("syn_quota_drops", ctypes.c_uint64), ("degraded_flows", ctypes.c_uint64),
    ]


class RuleStats(_Struct):
    _fields_ = [("hits", ctypes.c_uint64), ("last_hit", ctypes.c_uint64)]


class FragKey(_Struct):
    _fields_ = [
        ("src_ip", ctypes.c_uint32), ("dst_ip", ctypes.c_uint32),
        ("ip_id", ctypes.c_uint16), ("protocol", ctypes.c_uint8), ("direction", ctypes.c_uint8),
    ]


class FragValue(_Struct):
    _fields_ = [
        ("reserved", ctypes.c_uint64), ("action", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7),
    ]


class LogRate(_Struct):
    _fields_ = [("window_start", ctypes.c_uint64), ("count", ctypes.c_uint64)]


class EndpointValue(_Struct):
    _fields_ = [
        ("ip", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("mac", ctypes.c_uint8 * 6),
        ("prefixlen", ctypes.c_uint8), ("pad", ctypes.c_uint8),
    ]


class LogEvent(_Struct):
    _fields_ = [
        ("timestamp_ns", ctypes.c_uint64), ("src_ip", ctypes.c_uint32),
        ("dst_ip", ctypes.c_uint32), ("src_port", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16), ("protocol", ctypes.c_uint8),
        ("direction", ctypes.c_uint8), ("action", ctypes.c_uint8), ("reason", ctypes.c_uint8),
        ("policy_id", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
        ("policy_ver", ctypes.c_uint32), ("pad", ctypes.c_uint32),
    ]


# C struct name -> mirror, for the layout test.
MIRRORS = {
    "policy_key": PolicyKey, "policy_value": PolicyValue, "lpm_key": LpmKey,
    "port_lpm_key": PortLpmKey, "sport_lpm_key": SportLpmKey, "range_value": RangeValue,
    "session_key": SessionKey, "session_value": SessionValue, "map_pressure": MapPressure,
    "microseg_config": MicrosegConfig, "rule_stats": RuleStats, "frag_key": FragKey,
    "frag_value": FragValue, "log_rate": LogRate, "endpoint_value": EndpointValue,
    "log_event": LogEvent, "endpoint_usage": EndpointUsage,
}


class _Scalar:
    def pack(self):
        return bytes(self)      # the buffer protocol: the struct's own bytes, one copy

    @classmethod
    def unpack(cls, data):
        return cls.from_buffer_copy(bytes(data)[:ctypes.sizeof(cls)])


class U32(_Scalar, ctypes.c_uint32):
    pass


class U64(_Scalar, ctypes.c_uint64):
    pass


class MapSpec:
    """What a pinned map must look like; `size_param` names the module option sizing it."""

    def __init__(self, name, map_type, key, value, max_entries=None, flags=0, size_param=None):
        self.name = name
        self.map_type = map_type
        self.key = key
        self.value = value
        self.max_entries = max_entries
        self.flags = flags
        self.size_param = size_param

    @property
    def key_size(self):
        return ctypes.sizeof(self.key) if self.key is not None else 0

    @property
    def value_size(self):
        return ctypes.sizeof(self.value) if self.value is not None else 0

    def expected_max_entries(self, sizes):
        if self.size_param == "log_ring_pages":
            return sizes["log_ring_pages"] * 4096
        if self.size_param:
            return sizes[self.size_param]
        return self.max_entries


MAP_SPECS = [
    MapSpec("policy_map", bpf.BPF_MAP_TYPE_HASH, PolicyKey, PolicyValue,
            size_param="policy_map_size"),
    MapSpec("ip_range_map", bpf.BPF_MAP_TYPE_LPM_TRIE, LpmKey, RangeValue,
            flags=bpf.BPF_F_NO_PREALLOC, size_param="range_map_size"),
    MapSpec("local_range_map", bpf.BPF_MAP_TYPE_LPM_TRIE, LpmKey, RangeValue,
            flags=bpf.BPF_F_NO_PREALLOC, size_param="range_map_size"),
    MapSpec("port_range_map", bpf.BPF_MAP_TYPE_LPM_TRIE, PortLpmKey, RangeValue,
            flags=bpf.BPF_F_NO_PREALLOC, size_param="range_map_size"),
    MapSpec("sport_range_map", bpf.BPF_MAP_TYPE_LPM_TRIE, SportLpmKey, RangeValue,
            flags=bpf.BPF_F_NO_PREALLOC, size_param="range_map_size"),
    MapSpec("session_map", bpf.BPF_MAP_TYPE_LRU_HASH, SessionKey, SessionValue,
            flags=bpf.BPF_F_NO_COMMON_LRU, size_param="session_map_size"),
    MapSpec("stats_map", bpf.BPF_MAP_TYPE_PERCPU_ARRAY, U32, U64, max_entries=_abi.STAT_MAX),
    MapSpec("map_pressure_map", bpf.BPF_MAP_TYPE_ARRAY, U32, MapPressure, max_entries=1),
    MapSpec("config_map", bpf.BPF_MAP_TYPE_ARRAY, U32, MicrosegConfig, max_entries=1),
    MapSpec("rule_stats_map", bpf.BPF_MAP_TYPE_HASH, U32, RuleStats,
            size_param="rule_stats_size"),
    MapSpec("frag_map", bpf.BPF_MAP_TYPE_LRU_HASH, FragKey, FragValue,
            size_param="frag_map_size"),
    MapSpec("log_rate_map", bpf.BPF_MAP_TYPE_ARRAY, U32, LogRate, max_entries=1),
    MapSpec("endpoint_map", bpf.BPF_MAP_TYPE_HASH, U32, EndpointValue,
            size_param="endpoint_map_size"),
    MapSpec("endpoint_usage_map", bpf.BPF_MAP_TYPE_HASH, U32, EndpointUsage,
            size_param="endpoint_map_size"),
    MapSpec("log_events", bpf.BPF_MAP_TYPE_RINGBUF, None, None, size_param="log_ring_pages"),
]
MAP_SPEC = dict((spec.name, spec) for spec in MAP_SPECS)

# Map sizes with the seed's values as defaults (the option table's); they become -D flags.
DEFAULT_SIZES = _program_options.DEFAULT_SIZES


def ip_to_u32(address):
    """Dotted quad -> the u32 the kernel stores for it (network byte order in memory)."""
    return struct.unpack("=I", socket.inet_aton(address))[0]


def u32_to_ip(value):
    return socket.inet_ntoa(struct.pack("=I", value))


def port_to_bytes(port):
    return (port >> 8) & 0xff, port & 0xff


class PinnedMaps:
    """The pinned maps of one pin directory, opened by path (no BCC, no compile).

    names=None opens every map of MAP_SPECS; names=[] none (open() or create() them later).
    Use as a context manager so every fd is closed.
    """

    def __init__(self, pin_path=DEFAULT_PIN_PATH, names=None):
        self.pin_path = pin_path
        self.fds = {}
        wanted = [spec.name for spec in MAP_SPECS] if names is None else names
        try:
            for name in wanted:
                self.open(name)
        except Exception:
            self.close()
            raise

    def open(self, name):
        """Open the map pinned as <pin_path>/name (any name: a map set aside, the blob
        maps of _pinned_blob); raises OSError when it is not there."""
        self.fds[name] = bpf.obj_get(os.path.join(self.pin_path, name))
        return self.fds[name]

    def create(self, name, map_type, key_size, value_size, max_entries, flags=0):
        """Create a map, pin it as <pin_path>/name and hold it like the others: for the
        maps user space keeps beside the program's (BCC creates those)."""
        fd = bpf.map_create(map_type, key_size, value_size, max_entries, flags, name)
        try:
            bpf.obj_pin(fd, os.path.join(self.pin_path, name))
        except Exception:
            bpf.close(fd)
            raise
        self.fds[name] = fd
        return fd

    def unpin(self, name):
        """Close map `name` and remove its pin."""
        bpf.close(self.fds.pop(name))
        os.unlink(os.path.join(self.pin_path, name))

    def close(self):
        for fd in self.fds.values():
            bpf.close(fd)
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fd(self, name):
        return self.fds[name]

    def info(self, name):
        return bpf.map_info(self.fds[name])

    def map_id(self, name):
        """The kernel's id of the map held as `name`: a re-created map has a new one."""
        return self.info(name)["id"]

    # -- single-entry helpers ------------------------------------------------------
    def lookup(self, name, key):
        spec = MAP_SPEC[name]
        raw = bpf.map_lookup(self.fds[name], key.pack(), spec.value_size)
        return None if raw is None else spec.value.unpack(raw)

    def update(self, name, key, value, flags=0):
        bpf.map_update(self.fds[name], key.pack(), value.pack(), flags)

    def delete(self, name, key):
        return bpf.map_delete(self.fds[name], key.pack())

    # Packed bytes, for maps without a mirror (value_size: the map's, given by the caller).
    def lookup_bytes(self, name, key, value_size):
        return bpf.map_lookup(self.fds[name], key, value_size)

    def update_bytes(self, name, key, value, flags=0):
        bpf.map_update(self.fds[name], key, value, flags)

    def delete_bytes(self, name, key):
        """True if the key was there."""
        return bpf.map_delete(self.fds[name], key)

    def items(self, name):
        """All entries of a keyed map as (key, value) mirrors, read in batches."""
        spec = MAP_SPEC[name]
        for k, v in bpf.map_lookup_batch(self.fds[name], spec.key_size, spec.value_size):
            yield spec.key.unpack(k), spec.value.unpack(v)

    def raw_items(self, name, key_size=None, value_size=None):
        """All entries as packed (key, value) bytes: no mirror objects for bulk work.

        The sizes default to the map's spec; a map without one (or set aside with an older
        layout) takes them from the caller.
        """
        key_size, value_size = self._sizes(name, key_size, value_size)
        return bpf.map_lookup_batch(self.fds[name], key_size, value_size)

    def raw_batches(self, name):
        """All entries as (keys, values, count) per kernel batch: each batch's packed keys
        and values end to end, for a pass over a large map without a tuple per entry."""
        spec = MAP_SPEC[name]
        return bpf.map_lookup_batch_raw(self.fds[name], spec.key_size, spec.value_size)

    def delete_many(self, name, keys):
        """Delete packed keys in batches; returns how many were deleted."""
        return bpf.map_delete_batch(self.fds[name], keys, MAP_SPEC[name].key_size)

    @staticmethod
    def _sizes(name, key_size, value_size):
        if key_size is None or value_size is None:
            spec = MAP_SPEC[name]
            key_size = spec.key_size if key_size is None else key_size
            value_size = spec.value_size if value_size is None else value_size
        return key_size, value_size

    def update_many(self, name, pairs, flags=0):
        return self.update_packed(name, [(k.pack(), v.pack()) for k, v in pairs], flags)

    def update_packed(self, name, items, flags=0):
        """Store packed (key, value) bytes; returns how many."""
        spec = MAP_SPEC[name]
        return bpf.map_update_batch(self.fds[name], items, spec.key_size, spec.value_size, flags)

    def clear(self, name):
        spec = MAP_SPEC[name]
        entries = bpf.map_lookup_batch(self.fds[name], spec.key_size, spec.value_size)
        keys = [key for key, _value in entries]
        if keys:
            bpf.map_delete_batch(self.fds[name], keys, spec.key_size)
        return len(keys)

    def count(self, name):
        return sum(got for _keys, _values, got in self.raw_batches(name))

    # -- typed views -----------------------------------------------------------------
    def config(self):
        return self.lookup("config_map", U32(0))

    def write_config(self, config):
        self.update("config_map", U32(0), config)

    def pressure(self):
        return self.lookup("map_pressure_map", U32(0))

    def write_pressure(self, pressure):
        self.update("map_pressure_map", U32(0), pressure)

    def stats(self):
        """The stats counters summed over CPUs, by name."""
        ncpu = len(bpf.possible_cpus())
        per_cpu = bpf.percpu_value_size(8)
        totals = {}
        for index, name in enumerate(_abi.STAT_NAMES):
            raw = bpf.map_lookup(self.fds["stats_map"], U32(index).pack(), per_cpu)
            values = struct.unpack("=%dQ" % ncpu, raw[:8 * ncpu]) if raw else ()
            totals[name] = sum(values)
        return totals

    def reset_stats(self):
        zero = bytes(bpf.percpu_value_size(8))
        for index in range(_abi.STAT_MAX):
            bpf.map_update(self.fds["stats_map"], U32(index).pack(), zero, 0)


def pinned_map_ids(pin_path, names):
    """{name: map id} of the names pinned under pin_path now; a name not pinned is left out."""
    ids = {}
    for name in names:
        try:
            pinned = PinnedMaps(pin_path, names=[name])
        except OSError:
            continue
        with pinned:
            ids[name] = pinned.map_id(name)
    return ids

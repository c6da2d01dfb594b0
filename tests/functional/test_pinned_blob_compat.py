# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host upgraded from the previous release reads the policy source and the loader's
record that release pinned, and that release would read what this one writes.

The maps here are made and filled the way the previous release's _converge and _loader did
(map shape, key, u32 length, zero padding, JSON and zlib spelled out below, not taken from
_pinned_blob), then read with the current code; and the other way round.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import binascii
import json
import os
import struct
import zlib

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path

# The previous release's shapes.
OLD_SOURCE_CHUNK = 1024 * 1024
OLD_SOURCE_MAX_CHUNKS = 64
OLD_META_VALUE_SIZE = 65536


def _pin_map(pin, name, map_type, value_size, entries, flags=0):
    fd = bpf.map_create(map_type, 4, value_size, entries, flags, name)
    try:
        bpf.obj_pin(fd, os.path.join(pin, name))
    except Exception:
        bpf.close(fd)
        raise
    return fd


def _old_source_chunks(document):
    blob = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 1)
    return [blob[i:i + OLD_SOURCE_CHUNK] for i in range(0, len(blob), OLD_SOURCE_CHUNK)]


def _old_source_write(fd, policy_set, document):
    chunks = _old_source_chunks(document)
    for index, chunk in enumerate(chunks):
        value = struct.pack("=I", len(chunk)) + chunk
        value += b"\0" * (OLD_SOURCE_CHUNK + 4 - len(value))
        bpf.map_update(fd, struct.pack("=I", policy_set << 16 | index), value, 0)
    return len(chunks)


def _old_source_read(fd, policy_set):
    parts = []
    for index in range(OLD_SOURCE_MAX_CHUNKS):
        raw = bpf.map_lookup(fd, struct.pack("=I", policy_set << 16 | index),
                             OLD_SOURCE_CHUNK + 4)
        if raw is None:
            break
        parts.append(raw[4:4 + struct.unpack("=I", raw[:4])[0]])
    return json.loads(zlib.decompress(b"".join(parts)).decode())


def _big_document():
    """Compresses to more than one chunk: random hex does not shrink below half."""
    return {"rules": [{"name": binascii.hexlify(os.urandom(64)).decode(), "id": i}
                      for i in range(20000)]}


def test_policy_source_pinned_by_the_previous_release_is_read():
    pin = new_pin_path("blob")
    os.makedirs(pin)
    fd = _pin_map(pin, "policy_source", bpf.BPF_MAP_TYPE_HASH, OLD_SOURCE_CHUNK + 4,
                  OLD_SOURCE_MAX_CHUNKS * 2, bpf.BPF_F_NO_PREALLOC)
    try:
        small = {"rules": [{"name": "web", "ports": [80, 443]}], "default_action": "deny"}
        big = _big_document()
        assert _old_source_write(fd, 0, small) == 1
        assert _old_source_write(fd, 1, big) > 1
        assert _converge.read_source(pin, 0) == small
        assert _converge.read_source(pin, 1) == big

        # This release's write, read back as the previous release reads: a shorter document
        # over the long one leaves no stale chunk behind.
        _converge.write_source(pin, 1, _converge.encode_source(small))
        assert _old_source_read(fd, 1) == small
        assert bpf.map_lookup(fd, struct.pack("=I", 1 << 16 | 1), OLD_SOURCE_CHUNK + 4) is None
        assert _old_source_read(fd, 0) == small
        # Byte for byte what the previous release wrote for the same document.
        raw = bpf.map_lookup(fd, struct.pack("=I", 1 << 16), OLD_SOURCE_CHUNK + 4)
        chunk = _old_source_chunks(small)[0]
        assert raw == struct.pack("=I", len(chunk)) + chunk + \
            b"\0" * (OLD_SOURCE_CHUNK - len(chunk))
    finally:
        bpf.close(fd)
        _loader.remove_pins(pin)


def test_meta_pinned_by_the_previous_release_is_read():
    pin = new_pin_path("blob")
    os.makedirs(pin)
    fd = _pin_map(pin, "microseg_meta", bpf.BPF_MAP_TYPE_ARRAY, OLD_META_VALUE_SIZE, 1)
    try:
        assert _loader.read_meta(pin) is None          # the array's zeroed entry: nothing yet
        meta = {"cache_key": "ab" * 32, "interfaces": {"veth1": {"hooks": ["ingress"]}},
                "loader_version": "1"}
        blob = json.dumps(meta, sort_keys=True).encode()
        value = struct.pack("=I", len(blob)) + blob
        bpf.map_update(fd, struct.pack("=I", 0), value + b"\0" * (OLD_META_VALUE_SIZE - len(value)),
                       0)
        assert _loader.read_meta(pin) == meta

        meta["interfaces"]["veth2"] = {"hooks": ["egress"]}
        _loader.write_meta(pin, meta)
        raw = bpf.map_lookup(fd, struct.pack("=I", 0), OLD_META_VALUE_SIZE)
        blob = json.dumps(meta, sort_keys=True).encode()
        assert raw == struct.pack("=I", len(blob)) + blob + \
            b"\0" * (OLD_META_VALUE_SIZE - 4 - len(blob))
        assert _loader.read_meta(pin) == meta
    finally:
        bpf.close(fd)
        _loader.remove_pins(pin)


def test_policy_source_of_another_layout_is_dropped():
    """An older layout than the previous release's (an array of one value per set) is not
    read: it is unpinned and the next write makes the current one."""
    pin = new_pin_path("blob")
    os.makedirs(pin)
    fd = _pin_map(pin, "policy_source", bpf.BPF_MAP_TYPE_ARRAY, 4096, 2)
    try:
        assert _converge.read_source(pin, 0) is None
        assert not os.path.exists(os.path.join(pin, "policy_source"))
        _converge.write_source(pin, 0, _converge.encode_source({"rules": []}))
        assert _converge.read_source(pin, 0) == {"rules": []}
    finally:
        bpf.close(fd)
        _loader.remove_pins(pin)

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A JSON document kept in a pinned BPF map beside the program's maps.

Pinned, it lives as long as the maps it describes (bpffs, not the disk) and goes with them
on state=absent. Two use it: the policy source (_converge: policy_source, one document per
policy set) and the loader's record (_loader: microseg_meta).

The framing on the map is the one both maps have always had, byte for byte, so that a host
upgraded from an earlier release reads what that release pinned (and an older release reads
what this one writes):
- a map with u32 keys and values of chunk_size + 4 bytes;
- chunk `index` of slot `slot` is the value under key slot << 16 | index (host order): a u32
  length, that many bytes of the document, zeros to the value size;
- a document is its slot's chunks from index 0 up to the first missing key or zero length
  (an array map has every key: a slot never written reads as none), at most max_chunks,
  joined: JSON, zlib-compressed when zlib_level is set.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import struct
import zlib

from ansible_collections.ebpf.microseg.plugins.module_utils import _maps

_KEY = struct.Struct("=I")
_LENGTH = struct.Struct("=I")


class BlobTooLarge(Exception):
    """The encoded document does not fit; nothing was written."""

    def __init__(self, size, capacity):
        Exception.__init__(self, "%d bytes encoded; at most %d fit" % (size, capacity))
        self.size = size
        self.capacity = capacity


class PinnedBlob:
    """Where and how one kind of document is kept: <pin_path>/name, a map of map_type with
    slots * max_chunks values of chunk_size + 4 bytes. json_options go to json.dumps."""

    def __init__(self, name, map_type, chunk_size, max_chunks=1, slots=1, flags=0,
                 zlib_level=None, json_options=None):
        self.name = name
        self.map_type = map_type
        self.chunk_size = chunk_size
        self.value_size = chunk_size + _LENGTH.size
        self.max_chunks = max_chunks
        self.max_entries = slots * max_chunks
        self.flags = flags
        self.zlib_level = zlib_level
        self.json_options = json_options or {}

    @property
    def capacity(self):
        return self.chunk_size * self.max_chunks

    def encode(self, document):
        """The document's chunks; raises BlobTooLarge before anything is written."""
        blob = json.dumps(document, **self.json_options).encode()
        if self.zlib_level is not None:
            blob = zlib.compress(blob, self.zlib_level)
        if len(blob) > self.capacity:
            raise BlobTooLarge(len(blob), self.capacity)
        size = self.chunk_size
        return [blob[i:i + size] for i in range(0, len(blob), size)] or [b""]

    def _open(self, pin_path, create):
        """PinnedMaps holding the map, or None (create=False and none usable is pinned)."""
        maps = _maps.PinnedMaps(pin_path, names=[])
        try:
            if os.path.exists(os.path.join(pin_path, self.name)):
                maps.open(self.name)
                info = maps.info(self.name)
                if info["type"] == self.map_type and info["value_size"] == self.value_size:
                    return maps
                # Another layout (policy_source was a 2-slot array of 4 MiB values once): its
                # content is not readable here and the maps themselves are the truth.
                maps.unpin(self.name)
            if not create:
                maps.close()
                return None
            maps.create(self.name, self.map_type, _KEY.size, self.value_size,
                        self.max_entries, self.flags)
            return maps
        except Exception:
            maps.close()
            raise

    def read(self, pin_path, slot=0):
        """The document of `slot`, or None: no map, nothing written, or unreadable."""
        maps = self._open(pin_path, create=False)
        if maps is None:
            return None
        parts = []
        with maps:
            for index in range(self.max_chunks):
                raw = maps.lookup_bytes(self.name, _KEY.pack(slot << 16 | index),
                                        self.value_size)
                if raw is None:
                    break
                length = _LENGTH.unpack_from(raw)[0]
                if not length:
                    break
                parts.append(raw[_LENGTH.size:_LENGTH.size + length])
        if not parts:
            return None
        try:
            blob = b"".join(parts)
            if self.zlib_level is not None:
                blob = zlib.decompress(blob)
            return json.loads(blob.decode())
        except (zlib.error, ValueError):
            return None

    def write(self, pin_path, chunks, slot=0):
        """Store chunks from encode() as the document of `slot`, creating the map if needed;
        chunks a longer earlier document left behind are deleted."""
        with self._open(pin_path, create=True) as maps:
            for index, chunk in enumerate(chunks):
                value = _LENGTH.pack(len(chunk)) + chunk
                value += b"\0" * (self.value_size - len(value))
                maps.update_bytes(self.name, _KEY.pack(slot << 16 | index), value)
            for index in range(len(chunks), self.max_chunks):
                if not maps.delete_bytes(self.name, _KEY.pack(slot << 16 | index)):
                    break

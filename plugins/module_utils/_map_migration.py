# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pinned maps whose shape a new compile changes: find them, set them aside, copy them over.

BCC silently reuses an existing pin of the same name whatever its size, so microseg_program
moves a map whose size or layout changed aside (<name>_old) before the compile creates its
replacement, then copies what fits into the new map and unpins the old one.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps


def map_mismatches(pin_path, sizes):
    """Pinned maps whose shape differs from what the new compile declares.

    BCC silently reuses an existing pin of the same name whatever its size, so a size
    change must move the old map aside first (see migrate_maps).
    """
    out = []
    for spec in _maps.MAP_SPECS:
        path = os.path.join(pin_path, spec.name)
        if not os.path.exists(path):
            continue
        with _maps.PinnedMaps(pin_path, names=[spec.name]) as pinned:
            info = pinned.info(spec.name)
        want = spec.expected_max_entries(sizes)
        if info["max_entries"] != want or info["type"] != spec.map_type or \
                info["key_size"] != spec.key_size or info["value_size"] != spec.value_size:
            out.append({"map": spec.name, "max_entries": info["max_entries"],
                        "want_max_entries": want})
    return out


def set_aside(pin_path, names):
    moved = []
    for name in names:
        src = os.path.join(pin_path, name)
        dst = os.path.join(pin_path, name + "_old")
        if os.path.lexists(dst):
            os.unlink(dst)
        os.rename(src, dst)
        moved.append(name)
    return moved


def migrate_maps(pin_path, names):
    """Copy entries from maps set aside into their resized replacements, then unpin the old.

    Returns {map: copied}. A smaller new map keeps as many entries as fit. A value that
    grew (a new release appends fields to a struct: microseg.h only ever appends) is copied
    with its new tail zeroed; any other change of layout starts the map empty.
    """
    copied = {}
    for name in names:
        spec = _maps.MAP_SPEC[name]
        old = name + "_old"
        count = 0
        if spec.key is not None and spec.map_type not in (bpf.BPF_MAP_TYPE_PERCPU_ARRAY,):
            with _maps.PinnedMaps(pin_path, names=[old, name]) as pinned:
                new_max = pinned.info(name)["max_entries"]
                old_info = pinned.info(old)
                old_value_size = old_info["value_size"]
                items = []
                if old_info["key_size"] == spec.key_size and old_value_size <= spec.value_size:
                    tail = b"\0" * (spec.value_size - old_value_size)
                    for key, value in pinned.raw_items(old, spec.key_size, old_value_size):
                        items.append((bytes(key), bytes(value) + tail))
                        if len(items) >= new_max:
                            break
                if items:
                    count = pinned.update_packed(name, items)
        os.unlink(os.path.join(pin_path, old))
        copied[name] = count
    return copied

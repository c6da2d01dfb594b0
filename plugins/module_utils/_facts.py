# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the data plane's state back: attachment, program, config, pressure, stats."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import platform

from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink

HOOKS = ("ingress", "egress")


def attachment(ipr):
    """{interface: {hook: {prog_id, tag, program}}} for every link carrying our filter."""
    out = {}
    for link in _netlink.list_links(ipr):
        hooks = {}
        for hook in HOOKS:
            entry = _netlink.our_filter(ipr, link["index"], hook)
            if entry:
                hooks[hook] = {"prog_id": entry["prog_id"], "tag": entry["tag"],
                               "program": entry["name"]}
        if hooks:
            out[link["name"]] = hooks
    return out


def gather(pin_path, ipr):
    facts = {
        "pin_path": pin_path,
        "installed": False,
        "kernel": platform.release(),
        "interfaces": attachment(ipr),
    }
    if not os.path.exists(os.path.join(pin_path, "config_map")):
        return facts
    facts["installed"] = True
    meta = _loader.read_meta(pin_path) or {}
    facts["drift"] = sorted(set(meta.get("interfaces", {})) - set(facts["interfaces"]))
    facts["program"] = {
        "source_sha256": meta.get("source_sha256"),
        "headers": meta.get("headers"),
        "bcc_version": meta.get("bcc_version"),
        "compiled_at": meta.get("compiled_at"),
        "sizes": meta.get("sizes"),
        "programs": dict((fn, {"id": info["id"], "tag": info["tag"],
                               "load_time": info.get("load_time")})
                         for fn, info in _loader.pinned_program_info(pin_path).items()),
    }
    with _maps.PinnedMaps(pin_path) as pinned:
        config = pinned.config()
        pressure = pinned.pressure()
        facts["config"] = {
            "policy_generation": config.policy_epoch,
            "active_policy_set": config.policy_epoch & 1,
            "default_action": {
                "egress": _maps.ACTION_NAMES.get(config.default_action[0]),
                "ingress": _maps.ACTION_NAMES.get(config.default_action[1]),
            },
            "ipv6": _maps.L3_MODE_NAMES.get(config.ipv6_mode),
            "other_l3": _maps.L3_MODE_NAMES.get(config.other_l3_mode),
            "syn_flood_threshold": config.syn_flood_threshold,
            "pressure_warn_sessions": config.pressure_warn_sessions,
            "pressure_crit_sessions": config.pressure_crit_sessions,
            "log_rate": config.log_rate_per_sec,
        }
        facts["pressure"] = {
            "total_sessions": pressure.total_sessions,
            "syn_sent_count": pressure.syn_sent_count,
            "evictions": pressure.evictions,
            "insertion_failures": pressure.insertion_failures,
            "level": _maps.PRESSURE_LEVELS[pressure.pressure_level]
            if pressure.pressure_level < len(_maps.PRESSURE_LEVELS) else "unknown",
        }
        facts["stats"] = pinned.stats()
        maps = {}
        for spec in _maps.MAP_SPECS:
            info = pinned.info(spec.name)
            entry = {"max_entries": info["max_entries"], "id": info["id"]}
            if spec.key is not None and spec.map_type not in _FIXED_SIZE_TYPES:
                entry["entries"] = pinned.count(spec.name)
                entry["fill_percent"] = round(100.0 * entry["entries"] / info["max_entries"], 2)
            maps[spec.name] = entry
        facts["maps"] = maps
    return facts


# Arrays always hold max_entries; counting them says nothing.
_FIXED_SIZE_TYPES = (2, 6)  # BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY

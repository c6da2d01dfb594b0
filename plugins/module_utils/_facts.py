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


def session_summary(pinned, session_filter=None, limit=0):
    """Counts by protocol and TCP state; with a filter or limit, a bounded session list.

    One pass over the map in batches: a million sessions is a few hundred syscalls.
    """
    by_protocol = {}
    by_state = {}
    by_action = {}
    listed = []
    matched = 0
    want_list = limit > 0
    flt = session_filter or {}
    for key, value in pinned.items("session_map"):
        proto = _maps.PROTOCOL_NAMES.get(key.protocol, str(key.protocol))
        by_protocol[proto] = by_protocol.get(proto, 0) + 1
        if key.protocol == 6:
            state = _maps.TCP_STATES[value.state] if value.state < len(_maps.TCP_STATES) \
                else str(value.state)
            by_state[state] = by_state.get(state, 0) + 1
        action = _maps.ACTION_NAMES.get(value.action, str(value.action))
        by_action[action] = by_action.get(action, 0) + 1
        if want_list and _session_matches(key, value, flt):
            matched += 1
            if len(listed) < limit:
                listed.append(_session_view(key, value))
    out = {"by_protocol": by_protocol, "tcp_states": by_state, "by_action": by_action,
           "total": sum(by_protocol.values())}
    if want_list:
        out["list"] = listed
        out["matched"] = matched
        out["truncated"] = matched > len(listed)
    return out


def _session_matches(key, value, flt):
    if flt.get("address") and flt["address"] not in (_maps.u32_to_ip(key.src_ip),
                                                     _maps.u32_to_ip(key.dst_ip)):
        return False
    if flt.get("port") and flt["port"] not in (key.src_port, key.dst_port):
        return False
    if flt.get("protocol") and _maps.PROTOCOLS.get(flt["protocol"], flt["protocol"]) != \
            key.protocol:
        return False
    if flt.get("state") and (key.protocol != 6 or
                             _maps.TCP_STATES[value.state] != flt["state"].upper()):
        return False
    return True


def _session_view(key, value):
    return {
        "container": _maps.u32_to_ip(key.src_ip), "container_port": key.src_port,
        "remote": _maps.u32_to_ip(key.dst_ip), "remote_port": key.dst_port,
        "protocol": _maps.PROTOCOL_NAMES.get(key.protocol, key.protocol),
        "initiated": "ingress" if value.direction else "egress",
        "state": _maps.TCP_STATES[value.state] if key.protocol == 6 else None,
        "action": _maps.ACTION_NAMES.get(value.action),
        "policy_id": value.policy_id, "policy_generation": value.policy_ver,
        "packets": value.packets, "bytes": value.bytes,
    }


def gather(pin_path, ipr, session_filter=None, session_limit=0):
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
        facts["sessions"] = session_summary(pinned, session_filter, session_limit)
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

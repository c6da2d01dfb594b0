# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the data plane's state back: attachment, program, config, pressure, stats."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import datetime
import os
import platform
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _sessions

HOOKS = ("ingress", "egress")


def attachment(ipr, pin_path):
    """{interface: {hook: {prog_id, tag, program}}} for every link carrying our filter."""
    out = {}
    for link in _netlink.list_links(ipr):
        hooks = {}
        for hook in HOOKS:
            entry = _netlink.our_filter(ipr, link["index"], hook, pin_path)
            if entry:
                hooks[hook] = {"prog_id": entry["prog_id"], "tag": entry["tag"],
                               "program": entry["program"]}
        if hooks:
            out[link["name"]] = hooks
    return out


def session_summary(pinned, session_filter=None, limit=0):
    """Counts by protocol, TCP state and action; with a limit, a bounded filtered list.

    One pass over the raw batches for the counts (a million sessions in about a second);
    only the list needs a second pass, with per-entry decoding.
    """
    out = _sessions.summarize(pinned)
    if limit > 0:
        flt = session_filter or {}
        found, matched = _sessions.matching(
            pinned, lambda key, value: _session_matches(key, value, flt), limit)
        out["list"] = [_session_view(key, value) for key, value in found]
        out["matched"] = matched
        out["truncated"] = matched > len(found)
    return out


def rule_names(pin_path, config):
    """{policy_id: rule name} from the policy source stored beside the maps: the inactive
    set first, then the active one over it, so rules removed by the last change still get
    a name while their counters live."""
    names = {}
    active = config.policy_epoch & 1 if config else 0
    for policy_set in (1 - active, active):
        table = _converge.source_rule_ids(_converge.read_source(pin_path, policy_set)) or {}
        names.update((policy_id, name) for name, policy_id in table.items())
    return names


def top_rules(pinned, pin_path, config, count):
    """The `count` rules with the most hits: name, policy id, hits, last hit time.

    The kernel knows rules by policy id only; names come from rule_names()."""
    if count <= 0:
        return []
    names = rule_names(pin_path, config)
    rows = [(value.hits, key.value, value.last_hit) for key, value in pinned.items("rule_stats_map")]
    rows.sort(reverse=True)
    clock = monotonic_to_wall()
    return [{"name": names.get(policy_id, "default" if policy_id == 0 else None),
             "policy_id": policy_id, "hits": hits,
             "last_hit": _iso(clock(last_hit)) if last_hit else None}
            for hits, policy_id, last_hit in rows[:count]]


def endpoint_usage(pinned, links, config):
    """{interface: usage and quotas} of every endpoint the data plane has counted.

    sessions and half_open are the monitor's last recount plus what the data plane
    counted since; over_quota says which quota currently degrades or drops its new flows;
    address, prefixlen, mac and source (given or learned) are what the L2 trust checks
    know of it.
    """
    names = dict((link["index"], link["name"]) for link in links)
    out = {}
    for key, value in pinned.items("endpoint_map"):
        out[names.get(key.value, "ifindex-%d" % key.value)] = {
            "ifindex": key.value,
            "address": _maps.u32_to_ip(value.ip),
            "prefixlen": value.prefixlen or None,
            "mac": ":".join("%02x" % b for b in value.mac)
            if value.flags & _abi.ENDPOINT_FLAG_MAC else None,
            "source": "learned" if value.flags & _abi.ENDPOINT_FLAG_LEARNED else "given",
        }
    for key, usage in pinned.items("endpoint_usage_map"):
        over = []
        if config.endpoint_session_quota and usage.sessions >= config.endpoint_session_quota:
            over.append("sessions")
        if config.endpoint_half_open_quota and \
                usage.half_open >= config.endpoint_half_open_quota:
            over.append("half_open")
        out.setdefault(names.get(key.value, "ifindex-%d" % key.value), {}).update({
            "ifindex": key.value,
            "sessions": usage.sessions,
            "half_open": usage.half_open,
            "session_quota": config.endpoint_session_quota,
            "half_open_quota": config.endpoint_half_open_quota,
            "syn_quota_drops": usage.syn_quota_drops,
            "degraded_flows": usage.degraded_flows,
            "over_quota": over,
        })
    return out


def monotonic_to_wall():
    """A function from a bpf_ktime_get_ns() timestamp to epoch seconds."""
    offset = time.time() - time.monotonic()
    return lambda ns: ns / 1e9 + offset


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat(
        timespec="milliseconds")


def _session_matches(key, value, flt):
    if flt.get("address") and flt["address"] not in (_maps.u32_to_ip(key.src_ip),
                                                     _maps.u32_to_ip(key.dst_ip)):
        return False
    if flt.get("port") and flt["port"] not in (key.src_port, key.dst_port):
        return False
    if flt.get("protocol") and _abi.PROTOCOLS.get(flt["protocol"], flt["protocol"]) != \
            key.protocol:
        return False
    if flt.get("state") and (key.protocol != 6 or
                             _abi.TCP_STATES[value.state] != flt["state"].upper()):
        return False
    return True


def _session_view(key, value):
    return {
        "container": _maps.u32_to_ip(key.src_ip), "container_port": key.src_port,
        "remote": _maps.u32_to_ip(key.dst_ip), "remote_port": key.dst_port,
        "protocol": _abi.PROTOCOL_NAMES.get(key.protocol, key.protocol),
        "initiated": "ingress" if value.direction else "egress",
        "state": _abi.TCP_STATES[value.state] if key.protocol == _abi.IPPROTO_TCP else None,
        "action": _abi.ACTION_NAMES.get(value.action),
        "policy_id": value.policy_id, "policy_generation": value.policy_ver,
        "packets": value.packets, "bytes": value.bytes,
    }


def drift(meta, links, attached):
    """Interfaces that should carry the program but carry none on some hook.

    "Should" is what the last microseg_program run attached plus what its selection
    (names, globs, bridge) matches now, so a container started since then counts; an
    interface that no longer exists does not."""
    existing = dict((link["name"], link) for link in links)
    wanted = set(name for name in meta.get("interfaces", {}) if name in existing)
    selection = meta.get("selection") or {}
    try:
        wanted.update(_netlink.select_interfaces(links, [p for p in selection.get("interfaces") or []
                                                         if _netlink.has_glob(p) or p in existing],
                                                 selection.get("bridge")
                                                 if selection.get("bridge") in existing else None))
    except _netlink.NetlinkError:
        pass
    hooks = set(selection.get("hooks") or HOOKS)
    return sorted(name for name in wanted if not hooks <= set(attached.get(name, {})))


def gather(pin_path, ipr, session_filter=None, session_limit=0, top_rules_count=20):
    started = time.monotonic()
    links = _netlink.list_links(ipr)
    facts = {
        "pin_path": pin_path,
        "installed": False,
        "kernel": platform.release(),
        "interfaces": attachment(ipr, pin_path),
    }
    if not os.path.exists(os.path.join(pin_path, "config_map")):
        facts["versions"] = {"kernel": platform.release(), "bcc": None, "source_sha256": None,
                             "policy_generation": None, "kernel_headers": None}
        return facts
    facts["installed"] = True
    meta = _loader.read_meta(pin_path) or {}
    facts["drift"] = drift(meta, links, facts["interfaces"])
    selection = meta.get("selection") or {}
    facts["skipped_ports"] = [
        name for name in _netlink.bridge_ports(links, selection.get("bridge"))[1]
        if name not in facts["interfaces"]]
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
                "egress": _abi.ACTION_NAMES.get(config.default_action[0]),
                "ingress": _abi.ACTION_NAMES.get(config.default_action[1]),
            },
            "ipv6": _abi.L3_MODE_NAMES.get(config.ipv6_mode),
            "other_l3": _abi.L3_MODE_NAMES.get(config.other_l3_mode),
            "syn_flood_threshold": config.syn_flood_threshold,
            "pressure_warn_sessions": config.pressure_warn_sessions,
            "pressure_crit_sessions": config.pressure_crit_sessions,
            "log_rate": config.log_rate_per_sec,
            "degraded_passthrough": _abi.PASSTHROUGH_MODE_NAMES.get(config.degraded_passthrough),
            "endpoint_half_open_quota": config.endpoint_half_open_quota,
            "endpoint_session_quota": config.endpoint_session_quota,
        }
        facts["endpoints"] = endpoint_usage(pinned, links, config)
        facts["pressure"] = {
            "total_sessions": pressure.total_sessions,
            "syn_sent_count": pressure.syn_sent_count,
            "evictions": pressure.evictions,
            "insertion_failures": pressure.insertion_failures,
            "level": _abi.PRESSURE_LEVELS[pressure.pressure_level]
            if pressure.pressure_level < len(_abi.PRESSURE_LEVELS) else "unknown",
        }
        facts["stats"] = pinned.stats()
        facts["pressure"]["syn_flood_drops"] = facts["stats"]["tcp_syn_floods"]
        facts["pressure"]["map_full_drops"] = facts["stats"]["map_full_drops"]
        facts["pressure"]["last_check"] = _iso(monotonic_to_wall()(pressure.last_check)) \
            if pressure.last_check else None
        facts["sessions"] = session_summary(pinned, session_filter, session_limit)
        facts["rules"] = top_rules(pinned, pin_path, config, top_rules_count)
        maps = {}
        for spec in _maps.MAP_SPECS:
            info = pinned.info(spec.name)
            entry = {"max_entries": info["max_entries"], "id": info["id"]}
            if spec.name == "session_map":
                # The summary above has just read every session: no second pass.
                entry["entries"] = facts["sessions"]["total"]
            elif spec.key is not None and spec.map_type not in FIXED_SIZE_TYPES:
                entry["entries"] = pinned.count(spec.name)
            if "entries" in entry:
                entry["fill_percent"] = round(100.0 * entry["entries"] / info["max_entries"], 2)
            maps[spec.name] = entry
        facts["maps"] = maps
    facts["versions"] = {
        "kernel": platform.release(),
        "bcc": meta.get("bcc_version"),
        "source_sha256": meta.get("source_sha256"),
        "policy_generation": facts["config"]["policy_generation"],
        "kernel_headers": meta.get("headers"),
    }
    facts["gather_seconds"] = round(time.monotonic() - started, 3)
    return facts


# Arrays always hold max_entries; counting them says nothing.
FIXED_SIZE_TYPES = (2, 6)  # BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_program: gather -> compare -> plan -> apply.

`changed`, the diff and check mode all come from the one plan computed here, so a check
run predicts exactly what a real run does.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import socket
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _map_migration
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _program_options
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state

HOOKS = ("ingress", "egress")
STAGING_SUFFIX = "_new"


class ProgramError(Exception):
    pass


def validate(params):
    """Return the sizes dict; raise ProgramError naming the bad parameter."""
    sizes = {}
    for option in _program_options.OPTIONS:
        value = params.get(option.name)
        if value is None:
            value = option.default
        if option.type != "int" or value is None:
            continue
        problem = _program_options.range_error(option.name, value)
        if problem:
            raise ProgramError(problem)
        if option.power_of_two and value & (value - 1):
            raise ProgramError("%s: %d is not a power of two (the kernel requires one)"
                               % (option.name, value))
        if option.macro:
            sizes[option.name] = value
    warning = _param(params, "pressure_warning_percent")
    critical = _param(params, "pressure_critical_percent")
    if warning > critical:
        raise ProgramError("pressure_warning_percent (%d) is above pressure_critical_percent (%d)"
                           % (warning, critical))
    for interface, address in (params.get("endpoints") or {}).items():
        try:
            parse_endpoint(address)
        except (OSError, ValueError, TypeError):
            raise ProgramError("endpoints: %s: %r is not an IPv4 address (or address/prefix)"
                               % (interface, address))
    if not params["pin_path"].startswith("/"):
        raise ProgramError("pin_path: %s is not an absolute path" % params["pin_path"])
    if "." in os.path.basename(params["pin_path"].rstrip("/")):
        raise ProgramError("pin_path: bpffs refuses names containing '.' (%s)" % params["pin_path"])
    return sizes


def parse_endpoint(text):
    """'198.18.1.10' or '198.18.1.10/24' -> (address, prefixlen or 0); ValueError if bad."""
    address, _slash, plen = str(text).partition("/")
    socket.inet_aton(address)
    if address.count(".") != 3:
        raise ValueError(text)
    prefixlen = int(plen) if plen else 0
    if plen and not 1 <= prefixlen <= 32:
        raise ValueError(text)
    return address, prefixlen


def endpoint_text(value):
    """The endpoints option's canonical spelling of an endpoint_map value."""
    address = _maps.u32_to_ip(value.ip)
    return "%s/%d" % (address, value.prefixlen) if value.prefixlen else address


def endpoint_value(text):
    """An endpoints option value as the endpoint_map entry it stands for."""
    address, prefixlen = parse_endpoint(text)
    return _maps.EndpointValue(ip=_maps.ip_to_u32(address), prefixlen=prefixlen)


def desired_config_fields(params, sizes):
    """The config_map fields this module owns (policy_epoch and defaults belong to policy)."""
    session_max = sizes["session_map_size"]
    warn = _param(params, "pressure_warning_percent")
    crit = _param(params, "pressure_critical_percent")
    return {
        "ipv6_mode": _maps.L3_MODES[_param(params, "ipv6")],
        "other_l3_mode": _maps.L3_MODES[_param(params, "other_l3")],
        "syn_flood_threshold": _param(params, "syn_flood_threshold"),
        "pressure_warn_sessions": session_max * warn // 100 if crit else 0,
        "pressure_crit_sessions": session_max * crit // 100 if crit else 0,
        "session_max": session_max,
        "log_rate_per_sec": _param(params, "log_rate"),
        "flags": config_flags(params),
        "endpoint_half_open_quota": _param(params, "endpoint_half_open_quota"),
        "endpoint_session_quota": _param(params, "endpoint_session_quota", session_max // 2),
        "degraded_passthrough": _maps.PASSTHROUGH_MODES[_param(params, "degraded_passthrough")],
    }


def config_flags(params):
    learn = bool(params.get("learn_endpoints"))
    flags = _maps.CONFIG_FLAG_ANTISPOOF if params.get("endpoints") or learn else 0
    return flags | (_maps.CONFIG_FLAG_LEARN_ENDPOINTS if learn else 0)


def _param(params, name, default=None):
    """A parameter's value; unset: `default`, else the option table's default."""
    value = params.get(name)
    if value is not None:
        return value
    return _program_options.default(name) if default is None else default


def _config_view(fields):
    return {
        "ipv6": _maps.L3_MODE_NAMES.get(fields["ipv6_mode"]),
        "other_l3": _maps.L3_MODE_NAMES.get(fields["other_l3_mode"]),
        "syn_flood_threshold": fields["syn_flood_threshold"],
        "pressure_warn_sessions": fields["pressure_warn_sessions"],
        "pressure_crit_sessions": fields["pressure_crit_sessions"],
        "session_max": fields["session_max"],
        "log_rate": fields["log_rate_per_sec"],
        "anti_spoofing": bool(fields["flags"] & _maps.CONFIG_FLAG_ANTISPOOF),
        "learn_endpoints": bool(fields["flags"] & _maps.CONFIG_FLAG_LEARN_ENDPOINTS),
        "endpoint_half_open_quota": fields["endpoint_half_open_quota"],
        "endpoint_session_quota": fields["endpoint_session_quota"],
        "degraded_passthrough": _maps.PASSTHROUGH_MODE_NAMES.get(fields["degraded_passthrough"]),
    }


def gather(params, ipr):
    pin_path = params["pin_path"]
    state = {"pin_path": pin_path, "links": _netlink.list_links(ipr), "_ipr": ipr}
    state["meta"] = _loader.read_meta(pin_path) if os.path.isdir(pin_path) else None
    state["programs"] = _loader.pinned_program_info(pin_path) if os.path.isdir(pin_path) else {}
    config = None
    if os.path.exists(os.path.join(pin_path, "config_map")):
        with _maps.PinnedMaps(pin_path, names=["config_map"]) as pinned:
            config = pinned.config()
    state["config"] = config
    endpoints = {}
    if os.path.exists(os.path.join(pin_path, "endpoint_map")):
        with _maps.PinnedMaps(pin_path, names=["endpoint_map"]) as pinned:
            for key, value in pinned.items("endpoint_map"):
                if not value.flags & _maps.ENDPOINT_FLAG_LEARNED:   # the monitor's
                    endpoints[key.value] = endpoint_text(value)
    state["endpoints"] = endpoints
    attached, held = {}, {}
    for link in state["links"]:
        hooks = {}
        for hook in HOOKS:
            for entry in _netlink.hook_filters(ipr, link["index"], hook, pin_path):
                if entry["ours"]:
                    hooks[hook] = entry
                elif entry["held_by"]:
                    held.setdefault(link["name"], {})[hook] = entry["held_by"]
        if hooks:
            attached[link["name"]] = hooks
    state["attached"] = attached
    state["held"] = held   # our slot, another instance's filter
    return state


def plan(params, sources, current, sizes, missing_ok=False):
    """Compute every action and the before/after views. Pure apart from reading headers.

    missing_ok: named interfaces, the bridge and endpoint interfaces that do not exist yet
    are left out instead of refused (the boot restore, before the container runtime).
    """
    pin_path = params["pin_path"]
    links = dict((link["name"], link) for link in current["links"])
    meta = current["meta"] or {}
    actions = []
    result = {"pin_path": pin_path}

    if params["state"] == "absent":
        for name in sorted(current["attached"]):
            for hook in sorted(current["attached"][name]):
                actions.append({"action": "detach", "interface": name, "hook": hook})
            if name in meta.get("clsact_added", []):
                actions.append({"action": "remove_clsact", "interface": name})
        if os.path.isdir(pin_path):
            actions.append({"action": "unpin", "path": pin_path})
        before = {"interfaces": _attachment_view(current["attached"]),
                  "pinned": os.path.isdir(pin_path)}
        after = {"interfaces": {}, "pinned": False}
        return actions, before, after, result

    selected = _netlink.select_interfaces(current["links"], params["interfaces"], params["bridge"],
                                          missing_ok=missing_ok)
    result["skipped_interfaces"] = [
        name for name in _netlink.bridge_ports(current["links"], params["bridge"])[1]
        if name not in selected]
    hooks = sorted(set(params["hooks"]))
    held = current.get("held") or {}
    for name in selected:
        taken = [(hook, held[name][hook]) for hook in hooks if hook in held.get(name, {})]
        if taken:
            raise ProgramError(
                "interfaces: %s %s hook is held by the microseg instance pinned at %s; "
                "remove it there (state=absent) or leave %s out of this selection"
                % (name, taken[0][0], taken[0][1], name))
    key = _loader.cache_key(sources, pin_path, sizes)
    result["cache_key"] = key
    have_programs = set(current["programs"]) == set(_loader.PROGRAMS)
    compile_reason = None
    if not have_programs:
        compile_reason = "no pinned program"
    elif meta.get("cache_key") != key:
        compile_reason = "source or parameters changed"
    if compile_reason:
        actions.append({"action": "compile", "reason": compile_reason})
        if os.path.isdir(pin_path):
            mismatched = _map_migration.map_mismatches(pin_path, sizes)
            if mismatched:
                actions.append({"action": "migrate_maps", "maps": mismatched})

    program_ids = dict((fn, info["id"]) for fn, info in current["programs"].items())
    for name in selected:
        have = current["attached"].get(name, {})
        for hook in hooks:
            function = _loader.HOOK_PROGRAM[hook]
            entry = have.get(hook)
            if entry is None:
                if not have and name not in meta.get("clsact_added", []) and \
                        not _has_clsact_cached(current, links[name]):
                    if not any(a.get("interface") == name and a["action"] == "add_clsact"
                               for a in actions):
                        actions.append({"action": "add_clsact", "interface": name})
                actions.append({"action": "attach", "interface": name, "hook": hook})
            elif compile_reason or entry["prog_id"] != program_ids.get(function):
                actions.append({"action": "replace", "interface": name, "hook": hook,
                                "old_prog_id": entry["prog_id"]})
    for name, have in sorted(current["attached"].items()):
        for hook in sorted(have):
            if name not in selected or hook not in hooks:
                actions.append({"action": "detach", "interface": name, "hook": hook})

    by_name = dict((link["name"], link["index"]) for link in current["links"])
    want_endpoints = {}
    for interface, address in sorted((params.get("endpoints") or {}).items()):
        if interface not in by_name:
            if missing_ok:
                continue
            raise ProgramError("endpoints: interface %s does not exist" % interface)
        want_endpoints[by_name[interface]] = endpoint_text(endpoint_value(address))
    if want_endpoints != current["endpoints"]:
        actions.append({"action": "write_endpoints"})
    result["want_endpoints"] = want_endpoints

    want_config = desired_config_fields(params, sizes)
    have_config = None
    if current["config"] is not None:
        have_config = dict((k, getattr(current["config"], k)) for k in want_config)
    if have_config != want_config:
        actions.append({"action": "write_config"})

    before = {
        "interfaces": _attachment_view(current["attached"]),
        "cache_key": meta.get("cache_key"),
        "sizes": meta.get("sizes"),
        "config": _config_view(have_config) if have_config else None,
        "endpoints": _endpoint_view(current["endpoints"], current["links"]),
    }
    after = {
        "interfaces": dict((name, list(hooks)) for name in selected),
        "cache_key": key,
        "sizes": sizes,
        "config": _config_view(want_config),
        "endpoints": _endpoint_view(want_endpoints, current["links"]),
    }
    result["selected"] = selected
    result["hooks"] = hooks
    result["want_config"] = want_config
    return actions, before, after, result


def _endpoint_view(endpoints, links):
    names = dict((link["index"], link["name"]) for link in links)
    return dict((names.get(index, "ifindex %d" % index), address)
                for index, address in endpoints.items())


def _has_clsact_cached(current, link):
    cache = current.setdefault("_clsact", {})
    if link["index"] not in cache:
        cache[link["index"]] = current["_ipr"] is not None and \
            _netlink.has_clsact(current["_ipr"], link["index"])
    return cache[link["index"]]


def _attachment_view(attached):
    return dict((name, sorted(hooks)) for name, hooks in attached.items())


def apply(params, sources, current, actions, sizes, headers_fn, ipr):
    """Carry the plan out. On any failure the previous program stays attached."""
    pin_path = params["pin_path"]
    links = dict((link["name"], link) for link in current["links"])
    meta = dict(current["meta"] or {})
    report = {"compiled": False}

    if params["state"] == "absent":
        for act in actions:
            index = links.get(act.get("interface"), {}).get("index")
            if act["action"] == "detach" and index:
                _netlink.detach(ipr, index, act["hook"])
            elif act["action"] == "remove_clsact" and index:
                left = [f for hook in HOOKS for f in _netlink.hook_filters(ipr, index, hook)]
                if not left:
                    _netlink.del_clsact(ipr, index)
            elif act["action"] == "unpin":
                report["unpinned"] = _loader.remove_pins(pin_path)
        return report

    report["bpffs_mounted"] = _loader.ensure_pin_dir(pin_path)
    # config_map and microseg_meta are read-modify-written by microseg_policy (the policy
    # epoch) and the monitor too: the host lock keeps a concurrent converge's epoch flip
    # from being written back with the value read before it (or lost in a map migration).
    with _converge.HostLock(pin_path):
        return _apply_present(params, sources, current, actions, sizes, headers_fn, ipr,
                              links, meta, report)


def _apply_present(params, sources, current, actions, sizes, headers_fn, ipr, links, meta,
                   report):
    pin_path = params["pin_path"]
    kinds = set(act["action"] for act in actions)
    staged = False
    fds = {}
    try:
        if "compile" in kinds:
            headers = headers_fn()
            report["headers"] = dict((k, v) for k, v in headers.items() if k != "env")
            moved = []
            migrate = [a for a in actions if a["action"] == "migrate_maps"]
            if migrate:
                moved = _map_migration.set_aside(pin_path, [m["map"] for m in migrate[0]["maps"]])
            try:
                fds, seconds = _loader.compile_and_load(sources, pin_path, sizes, headers)
            except Exception:
                _restore_set_aside(pin_path, moved)
                raise
            report["compiled"] = True
            report["compile_seconds"] = round(seconds, 3)
            _loader.pin_programs(fds, pin_path, STAGING_SUFFIX)
            staged = True
            if moved:
                report["maps_migrated"] = _map_migration.migrate_maps(pin_path, moved)
            meta.update({
                "cache_key": _loader.cache_key(sources, pin_path, sizes),
                "source_sha256": _loader.source_hash(sources),
                "sizes": sizes,
                "headers": report["headers"],
                "bcc_version": _loader.bcc_version(),
                "compiled_at": time.time(),
                "compile_seconds": report["compile_seconds"],
            })
        else:
            fds = _loader.open_pinned_programs(pin_path)

        if "write_config" in kinds or "compile" in kinds:
            _write_config(pin_path, params, sizes)
        if "write_endpoints" in kinds:
            _write_endpoints(pin_path, plan_endpoints(params, current))

        switched = []
        clsact_added = set(meta.get("clsact_added", []))
        try:
            for act in actions:
                if act["action"] not in ("add_clsact", "attach", "replace"):
                    continue
                index = links[act["interface"]]["index"]
                if act["action"] == "add_clsact":
                    if not _netlink.has_clsact(ipr, index):
                        _netlink.add_clsact(ipr, index)
                        clsact_added.add(act["interface"])
                    continue
                function = _loader.HOOK_PROGRAM[act["hook"]]
                _netlink.attach(ipr, index, act["hook"], fds[function],
                                _netlink.filter_name(function, pin_path))
                switched.append(act)
        except Exception:
            _roll_back(ipr, links, switched, pin_path)
            raise
        if staged:
            _loader.promote_programs(pin_path, STAGING_SUFFIX)
            staged = False

        for act in actions:
            if act["action"] == "detach":
                link = links.get(act["interface"])
                if link:
                    _netlink.detach(ipr, link["index"], act["hook"])
                    if act["interface"] in clsact_added and not any(
                            _netlink.hook_filters(ipr, link["index"], hook) for hook in HOOKS):
                        _netlink.del_clsact(ipr, link["index"])
                        clsact_added.discard(act["interface"])

        attached_now = {}
        for link in _netlink.list_links(ipr):
            hooks = [hook for hook in HOOKS
                     if _netlink.our_filter(ipr, link["index"], hook, pin_path)]
            if hooks:
                attached_now[link["name"]] = hooks
        meta["interfaces"] = attached_now
        meta["clsact_added"] = sorted(n for n in clsact_added if n in attached_now)
        meta["pin_path"] = pin_path
        # What the monitor's auto-attach and the facts' drift check select from.
        meta["selection"] = {"interfaces": list(params["interfaces"] or []),
                             "bridge": params["bridge"], "hooks": sorted(set(params["hooks"]))}
        _loader.write_meta(pin_path, meta)
    finally:
        for fd in fds.values():
            bpf.close(fd)
        if staged:
            for pin, _hook in _loader.PROGRAMS.values():
                path = os.path.join(pin_path, pin + STAGING_SUFFIX)
                if os.path.lexists(path):
                    os.unlink(path)
    return report


def _restore_set_aside(pin_path, moved):
    for name in moved:
        new = os.path.join(pin_path, name)
        old = os.path.join(pin_path, name + "_old")
        if os.path.lexists(old):
            if os.path.lexists(new):
                os.unlink(new)
            os.rename(old, new)


def _roll_back(ipr, links, switched, pin_path):
    """Put the previously pinned program back on the hooks we already switched."""
    try:
        old = _loader.open_pinned_programs(pin_path)
    except Exception:
        old = {}
    try:
        for act in switched:
            function = _loader.HOOK_PROGRAM[act["hook"]]
            index = links[act["interface"]]["index"]
            if act["action"] == "replace" and function in old:
                _netlink.attach(ipr, index, act["hook"], old[function],
                                _netlink.filter_name(function, pin_path))
            elif act["action"] == "attach":
                _netlink.detach(ipr, index, act["hook"])
    finally:
        for fd in old.values():
            bpf.close(fd)


def plan_endpoints(params, current):
    by_name = dict((link["name"], link["index"]) for link in current["links"])
    return dict((by_name[name], address)
                for name, address in (params.get("endpoints") or {}).items() if name in by_name)


# -- the record the boot restore reads (_saved_state.py) ------------------------------------
def plan_saved_state(params, sources):
    """Actions that bring STATE_DIR in line with this run: write the record (state=present,
    when it is missing or says something else) or remove it (state=absent)."""
    state_dir, pin_path = params.get("state_dir"), params["pin_path"]
    if not state_dir:
        return []
    where = _saved_state.instance_dir(state_dir, pin_path)
    if params["state"] == "absent":
        return [{"action": "remove_saved_state", "path": where}] \
            if _saved_state.has_saved(state_dir, pin_path) else []
    record = _saved_state.program_record(params, sources)
    if _saved_state.program_needs_save(state_dir, pin_path, record):
        return [{"action": "save_state", "path": where}]
    return []


def apply_saved_state(params, sources, actions):
    state_dir, pin_path = params.get("state_dir"), params["pin_path"]
    for act in actions:
        if act["action"] == "save_state":
            _saved_state.save_program(
                state_dir, pin_path, _saved_state.program_record(params, sources))
        elif act["action"] == "remove_saved_state":
            _saved_state.remove(state_dir, pin_path)


def _write_endpoints(pin_path, wanted):
    with _maps.PinnedMaps(pin_path, names=["endpoint_map"]) as pinned:
        for key, value in list(pinned.items("endpoint_map")):
            if key.value not in wanted and not value.flags & _maps.ENDPOINT_FLAG_LEARNED:
                pinned.delete("endpoint_map", key)
        for index, text in wanted.items():
            pinned.update("endpoint_map", _maps.U32(index), endpoint_value(text))


def _write_config(pin_path, params, sizes):
    with _maps.PinnedMaps(pin_path, names=["config_map"]) as pinned:
        config = pinned.config() or _maps.MicrosegConfig()
        for key, value in desired_config_fields(params, sizes).items():
            setattr(config, key, value)
        pinned.write_config(config)


def describe(params, ipr):
    """Per-interface attachment and program ids, read back after apply."""
    pin_path = params["pin_path"]
    programs = _loader.pinned_program_info(pin_path) if os.path.isdir(pin_path) else {}
    progs = dict((fn, {"id": info["id"], "tag": info["tag"], "name": info.get("name")})
                 for fn, info in programs.items())
    return _facts.attachment(ipr, pin_path), progs

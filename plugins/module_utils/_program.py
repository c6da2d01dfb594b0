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

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _difference
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
        "ipv6_mode": _abi.L3_MODES[_param(params, "ipv6")],
        "other_l3_mode": _abi.L3_MODES[_param(params, "other_l3")],
        "syn_flood_threshold": _param(params, "syn_flood_threshold"),
        "pressure_warn_sessions": session_max * warn // 100 if crit else 0,
        "pressure_crit_sessions": session_max * crit // 100 if crit else 0,
        "session_max": session_max,
        "log_rate_per_sec": _param(params, "log_rate"),
        "flags": config_flags(params),
        "endpoint_half_open_quota": _param(params, "endpoint_half_open_quota"),
        "endpoint_session_quota": _param(params, "endpoint_session_quota", session_max // 2),
        "degraded_passthrough": _abi.PASSTHROUGH_MODES[_param(params, "degraded_passthrough")],
    }


def config_flags(params):
    learn = bool(params.get("learn_endpoints"))
    flags = _abi.MS_CFG_ANTISPOOF if params.get("endpoints") or learn else 0
    return flags | (_abi.MS_CFG_LEARN_ENDPOINTS if learn else 0)


def _param(params, name, default=None):
    """A parameter's value; unset: `default`, else the option table's default."""
    value = params.get(name)
    if value is not None:
        return value
    return _program_options.default(name) if default is None else default


def _config_view(fields):
    return {
        "ipv6": _abi.L3_MODE_NAMES.get(fields["ipv6_mode"]),
        "other_l3": _abi.L3_MODE_NAMES.get(fields["other_l3_mode"]),
        "syn_flood_threshold": fields["syn_flood_threshold"],
        "pressure_warn_sessions": fields["pressure_warn_sessions"],
        "pressure_crit_sessions": fields["pressure_crit_sessions"],
        "session_max": fields["session_max"],
        "log_rate": fields["log_rate_per_sec"],
        "anti_spoofing": bool(fields["flags"] & _abi.MS_CFG_ANTISPOOF),
        "learn_endpoints": bool(fields["flags"] & _abi.MS_CFG_LEARN_ENDPOINTS),
        "endpoint_half_open_quota": fields["endpoint_half_open_quota"],
        "endpoint_session_quota": fields["endpoint_session_quota"],
        "degraded_passthrough": _abi.PASSTHROUGH_MODE_NAMES.get(fields["degraded_passthrough"]),
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
                if not value.flags & _abi.ENDPOINT_FLAG_LEARNED:   # the monitor's
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


class ProgramPlan:
    """What one run does: its actions, in order, and its before/after (a DifferenceTracker).

    `actions` is what the module returns (one dict per step); the other fields are what
    the plan decided and apply must not decide again.
    """

    def __init__(self, pin_path, state="present"):
        self.pin_path = pin_path
        self.state = state
        self.actions = []
        self.diff = _difference.DifferenceTracker()
        self.selected = []
        self.hooks = []
        self.skipped_interfaces = []
        self.cache_key = None
        self.want_endpoints = None       # {ifindex: "ip[/len][,mac]"}, None: not planned
        self.want_config = None          # microseg_config fields

    def add(self, action, **fields):
        fields["action"] = action
        self.actions.append(fields)

    def kinds(self):
        return set(act["action"] for act in self.actions)

    def of(self, *kinds):
        return [act for act in self.actions if act["action"] in kinds]

    def has(self, action, interface):
        return any(act["action"] == action and act.get("interface") == interface
                   for act in self.actions)

    @property
    def before(self):
        return self.diff.before

    @property
    def after(self):
        return self.diff.after


def plan(params, sources, current, sizes, missing_ok=False):
    """Compute every action and the before/after views. Pure apart from reading headers.

    missing_ok: named interfaces, the bridge and endpoint interfaces that do not exist yet
    are left out instead of refused (the boot restore, before the container runtime).
    """
    out = ProgramPlan(params["pin_path"], params["state"])
    if params["state"] == "absent":
        _plan_removal(out, current)
        return out
    out.selected = _netlink.select_interfaces(current["links"], params["interfaces"],
                                              params["bridge"], missing_ok=missing_ok)
    out.skipped_interfaces = [
        name for name in _netlink.bridge_ports(current["links"], params["bridge"])[1]
        if name not in out.selected]
    out.hooks = sorted(set(params["hooks"]))
    _refuse_held_hooks(out, current)
    compiling = _plan_compile(out, sources, current, sizes)
    _plan_hooks(out, current, compiling)
    _plan_endpoints(out, params, current, missing_ok)
    _plan_config(out, params, current, sizes)
    return out


def _plan_removal(out, current):
    meta = current["meta"] or {}
    for name in sorted(current["attached"]):
        for hook in sorted(current["attached"][name]):
            out.add("detach", interface=name, hook=hook)
        if name in meta.get("clsact_added", []):
            out.add("remove_clsact", interface=name)
    pinned = os.path.isdir(out.pin_path)
    if pinned:
        out.add("unpin", path=out.pin_path)
    out.diff.add("interfaces", _attachment_view(current["attached"]), {})
    out.diff.add("pinned", pinned, False)


def _refuse_held_hooks(out, current):
    held = current.get("held") or {}
    for name in out.selected:
        taken = [(hook, held[name][hook]) for hook in out.hooks if hook in held.get(name, {})]
        if taken:
            hook, holder = taken[0]
            remedy = "remove it there (state=absent)" if holder.startswith("/") else \
                "remove that filter (tc filter del dev %s %s)" % (name, hook)
            raise ProgramError(
                "interfaces: %s %s hook is held by %s; %s or leave %s out of this selection"
                % (name, hook, _netlink.holder_text(holder), remedy, name))


def _plan_compile(out, sources, current, sizes):
    """Plan a compile when the pinned program is missing or built from other input."""
    meta = current["meta"] or {}
    out.cache_key = _loader.cache_key(sources, out.pin_path, sizes)
    reason = None
    if set(current["programs"]) != set(_loader.PROGRAMS):
        reason = "no pinned program"
    elif meta.get("cache_key") != out.cache_key:
        reason = "source or parameters changed"
    if reason:
        out.add("compile", reason=reason)
        if os.path.isdir(out.pin_path):
            mismatched = _map_migration.map_mismatches(out.pin_path, sizes)
            if mismatched:
                out.add("migrate_maps", maps=mismatched)
    out.diff.add("cache_key", meta.get("cache_key"), out.cache_key)
    out.diff.add("sizes", meta.get("sizes"), sizes)
    return reason is not None


def _plan_hooks(out, current, compiling):
    links = dict((link["name"], link) for link in current["links"])
    meta = current["meta"] or {}
    program_ids = dict((fn, info["id"]) for fn, info in current["programs"].items())
    for name in out.selected:
        have = current["attached"].get(name, {})
        for hook in out.hooks:
            entry = have.get(hook)
            if entry is None:
                if not have and name not in meta.get("clsact_added", []) and \
                        not _has_clsact_cached(current, links[name]) and \
                        not out.has("add_clsact", name):
                    out.add("add_clsact", interface=name)
                out.add("attach", interface=name, hook=hook)
            elif compiling or entry["prog_id"] != program_ids.get(_loader.HOOK_PROGRAM[hook]):
                out.add("replace", interface=name, hook=hook, old_prog_id=entry["prog_id"])
    for name, have in sorted(current["attached"].items()):
        for hook in sorted(have):
            if name not in out.selected or hook not in out.hooks:
                out.add("detach", interface=name, hook=hook)
    out.diff.add("interfaces", _attachment_view(current["attached"]),
                 dict((name, list(out.hooks)) for name in out.selected))


def _plan_endpoints(out, params, current, missing_ok):
    by_name = dict((link["name"], link["index"]) for link in current["links"])
    want = {}
    for interface, address in sorted((params.get("endpoints") or {}).items()):
        if interface not in by_name:
            if missing_ok:
                continue
            raise ProgramError("endpoints: interface %s does not exist" % interface)
        want[by_name[interface]] = endpoint_text(endpoint_value(address))
    if want != current["endpoints"]:
        out.add("write_endpoints")
    out.want_endpoints = want
    out.diff.add("endpoints", _endpoint_view(current["endpoints"], current["links"]),
                 _endpoint_view(want, current["links"]))


def _plan_config(out, params, current, sizes):
    out.want_config = desired_config_fields(params, sizes)
    have = None
    if current["config"] is not None:
        have = dict((k, getattr(current["config"], k)) for k in out.want_config)
    if have != out.want_config:
        out.add("write_config")
    out.diff.add("config", _config_view(have) if have else None, _config_view(out.want_config))


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


def apply(params, sources, current, program_plan, sizes, headers_fn, ipr):
    """Carry the plan out. On any failure the previous program stays attached."""
    links = dict((link["name"], link) for link in current["links"])
    if program_plan.state == "absent":
        return _apply_removal(program_plan, links, ipr)
    report = {"compiled": False, "bpffs_mounted": _loader.ensure_pin_dir(program_plan.pin_path)}
    # config_map and microseg_meta are read-modify-written by microseg_policy (the policy
    # epoch) and the monitor too: the host lock keeps a concurrent converge's epoch flip
    # from being written back with the value read before it (or lost in a map migration).
    with _converge.HostLock(program_plan.pin_path):
        _apply_present(params, sources, current, program_plan, sizes, headers_fn, ipr, links,
                       report)
    return report


def _apply_removal(program_plan, links, ipr):
    report = {"compiled": False}
    for act in program_plan.actions:
        index = links.get(act.get("interface"), {}).get("index")
        if act["action"] == "detach" and index:
            _netlink.detach(ipr, index, act["hook"])
        elif act["action"] == "remove_clsact" and index:
            if not [f for hook in HOOKS for f in _netlink.hook_filters(ipr, index, hook)]:
                _netlink.del_clsact(ipr, index)
        elif act["action"] == "unpin":
            report["unpinned"] = _loader.remove_pins(program_plan.pin_path)
    return report


def _apply_present(params, sources, current, program_plan, sizes, headers_fn, ipr, links,
                   report):
    """Compile (staged), write config and endpoints, switch hooks, promote, detach, record.

    The new programs are pinned under STAGING_SUFFIX until every hook runs them, so a
    failure anywhere leaves the previous pins and hooks as they were.
    """
    pin_path = program_plan.pin_path
    kinds = program_plan.kinds()
    meta = dict(current["meta"] or {})
    fds, staged = {}, False
    try:
        if "compile" in kinds:
            fds = _compile_staged(sources, program_plan, sizes, headers_fn, meta, report)
            staged = True
        else:
            fds = _loader.open_pinned_programs(pin_path)
        if "write_config" in kinds or "compile" in kinds:
            _write_config(pin_path, program_plan.want_config)
        if "write_endpoints" in kinds:
            _write_endpoints(pin_path, program_plan.want_endpoints)
        clsact_added = set(meta.get("clsact_added", []))
        _switch_hooks(program_plan, fds, links, clsact_added, ipr)
        if staged:
            _loader.promote_programs(pin_path, STAGING_SUFFIX)
            staged = False
        _detach_unselected(program_plan, links, clsact_added, ipr)
        _record_meta(params, pin_path, meta, clsact_added, ipr)
    finally:
        for fd in fds.values():
            bpf.close(fd)
        if staged:
            for pin, _hook in _loader.PROGRAMS.values():
                path = os.path.join(pin_path, pin + STAGING_SUFFIX)
                if os.path.lexists(path):
                    os.unlink(path)


def _compile_staged(sources, program_plan, sizes, headers_fn, meta, report):
    """Compile and load, migrating resized maps; the programs are pinned staged."""
    pin_path = program_plan.pin_path
    headers = headers_fn()
    report["headers"] = dict((k, v) for k, v in headers.items() if k != "env")
    migrate = program_plan.of("migrate_maps")
    moved = _map_migration.set_aside(pin_path, [m["map"] for m in migrate[0]["maps"]]) \
        if migrate else []
    try:
        fds, seconds = _loader.compile_and_load(sources, pin_path, sizes, headers)
    except Exception:
        _restore_set_aside(pin_path, moved)
        raise
    report["compiled"] = True
    report["compile_seconds"] = round(seconds, 3)
    _loader.pin_programs(fds, pin_path, STAGING_SUFFIX)
    if moved:
        report["maps_migrated"] = _map_migration.migrate_maps(pin_path, moved)
    meta.update({
        "cache_key": program_plan.cache_key,
        "source_sha256": _loader.source_hash(sources),
        "sizes": sizes,
        "headers": report["headers"],
        "bcc_version": _loader.bcc_version(),
        "compiled_at": time.time(),
        "compile_seconds": report["compile_seconds"],
    })
    return fds


def _switch_hooks(program_plan, fds, links, clsact_added, ipr):
    """Attach or replace every planned hook; on a failure put the old programs back."""
    switched = []
    try:
        for act in program_plan.of("add_clsact", "attach", "replace"):
            index = links[act["interface"]]["index"]
            if act["action"] == "add_clsact":
                if not _netlink.has_clsact(ipr, index):
                    _netlink.add_clsact(ipr, index)
                    clsact_added.add(act["interface"])
                continue
            function = _loader.HOOK_PROGRAM[act["hook"]]
            _netlink.attach(ipr, index, act["hook"], fds[function],
                            _netlink.filter_name(function, program_plan.pin_path))
            switched.append(act)
    except Exception:
        _roll_back(ipr, links, switched, program_plan.pin_path)
        raise


def _detach_unselected(program_plan, links, clsact_added, ipr):
    for act in program_plan.of("detach"):
        link = links.get(act["interface"])
        if not link:
            continue
        _netlink.detach(ipr, link["index"], act["hook"])
        if act["interface"] in clsact_added and not any(
                _netlink.hook_filters(ipr, link["index"], hook) for hook in HOOKS):
            _netlink.del_clsact(ipr, link["index"])
            clsact_added.discard(act["interface"])


def _record_meta(params, pin_path, meta, clsact_added, ipr):
    """What the kernel now runs where, read back: the monitor and facts start from it."""
    attached_now = {}
    for link in _netlink.list_links(ipr):
        hooks = [hook for hook in HOOKS if _netlink.our_filter(ipr, link["index"], hook, pin_path)]
        if hooks:
            attached_now[link["name"]] = hooks
    meta["interfaces"] = attached_now
    meta["clsact_added"] = sorted(n for n in clsact_added if n in attached_now)
    meta["pin_path"] = pin_path
    # What the monitor's auto-attach and the facts' drift check select from.
    meta["selection"] = {"interfaces": list(params["interfaces"] or []),
                         "bridge": params["bridge"], "hooks": sorted(set(params["hooks"]))}
    _loader.write_meta(pin_path, meta)


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
            if key.value not in wanted and not value.flags & _abi.ENDPOINT_FLAG_LEARNED:
                pinned.delete("endpoint_map", key)
        for index, text in wanted.items():
            pinned.update("endpoint_map", _maps.U32(index), endpoint_value(text))


def _write_config(pin_path, fields):
    with _maps.PinnedMaps(pin_path, names=["config_map"]) as pinned:
        config = pinned.config() or _maps.MicrosegConfig()
        for key, value in fields.items():
            setattr(config, key, value)
        pinned.write_config(config)


def describe(params, ipr):
    """Per-interface attachment and program ids, read back after apply."""
    pin_path = params["pin_path"]
    programs = _loader.pinned_program_info(pin_path) if os.path.isdir(pin_path) else {}
    progs = dict((fn, {"id": info["id"], "tag": info["tag"], "name": info.get("name")})
                 for fn, info in programs.items())
    return _facts.attachment(ipr, pin_path), progs

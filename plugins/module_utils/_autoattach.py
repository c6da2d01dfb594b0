# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitor's auto-attach: the pinned programs go onto every interface that matches the
instance's selection, at start (reconcile) and as links appear (netlink events); a link
that goes away is forgotten in the loader's record and in endpoint_map."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import select

from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink


class AutoAttach:
    """Attach state for one monitor: its options, the data plane it attaches, the netlink
    sockets (one for requests, one bound to link events) and where it reports."""

    def __init__(self, options, plane, ipr, events_ipr, ifnames, say):
        self.options = options
        self.plane = plane
        self.ipr = ipr
        self.events_ipr = events_ipr
        self.ifnames = ifnames          # the monitor's index -> name cache, shared
        self.say = say

    def _selection(self):
        opts = self.options
        if opts.interfaces or opts.bridge:
            return list(opts.interfaces or []), opts.bridge, list(opts.hooks)
        meta = _loader.read_meta(opts.pin_path) or {}
        selection = meta.get("selection") or {}
        return (list(selection.get("interfaces") or []), selection.get("bridge"),
                list(selection.get("hooks") or opts.hooks))

    @staticmethod
    def _wanted(link, links, patterns, bridge):
        return _netlink.is_selected(link, links, patterns, bridge)

    def reconcile(self):
        if not self.options.attach or self.ipr is None or not self.plane.up:
            return
        patterns, bridge, hooks = self._selection()
        links = _netlink.list_links(self.ipr)
        for link in links:
            if self._wanted(link, links, patterns, bridge):
                self._ensure_attached(link, hooks)

    def _ensure_attached(self, link, hooks):
        if not self.plane.programs:
            return
        added = []
        try:
            if not _netlink.has_clsact(self.ipr, link["index"]):
                _netlink.add_clsact(self.ipr, link["index"])
            pin_path = self.options.pin_path
            for hook in hooks:
                present = _netlink.hook_filters(self.ipr, link["index"], hook, pin_path)
                if any(entry["ours"] for entry in present):
                    continue
                holders = [entry["held_by"] for entry in present if entry["held_by"]]
                if holders:
                    self.say("%s %s is held by %s: left alone"
                             % (link["name"], hook, _netlink.holder_text(holders[0])))
                    continue
                function = _loader.HOOK_PROGRAM[hook]
                _netlink.attach(self.ipr, link["index"], hook, self.plane.programs[function],
                                _netlink.filter_name(function, pin_path))
                added.append(hook)
        except Exception as exc:  # pylint: disable=broad-except
            # The link may vanish between the event and the attach (containers are short-lived).
            self.say("attach to %s failed: %s" % (link["name"], exc))
            return
        if added:
            self.say("attached to %s (%s)" % (link["name"], ", ".join(added)))
            self._record_interface(link["name"], hooks, present=True)

    def _record_interface(self, name, hooks, present):
        try:
            with _converge.HostLock(self.options.pin_path, timeout=15):
                meta = _loader.read_meta(self.options.pin_path)
                if meta is None:
                    return
                interfaces = dict(meta.get("interfaces") or {})
                if present:
                    interfaces[name] = sorted(hooks)
                elif name in interfaces:
                    del interfaces[name]
                else:
                    return
                meta["interfaces"] = interfaces
                _loader.write_meta(self.options.pin_path, meta)
        except (OSError, _loader.LoaderError, _converge.HostLockBusy) as exc:
            self.say("cannot record %s: %s" % (name, exc))

    def link_events(self):
        patterns, bridge, hooks = self._selection()
        links = None
        while True:
            ready, _w, _x = select.select([self.events_ipr.fileno()], [], [], 0)
            if not ready:
                break
            for msg in self.events_ipr.get():
                name = msg.get_attr("IFLA_IFNAME")
                if msg["event"] == "RTM_DELLINK":
                    self.ifnames.pop(msg["index"], None)
                    self._forget_interface(msg["index"], name)
                    continue
                if msg["event"] != "RTM_NEWLINK" or not self.plane.up or not self.options.attach:
                    continue
                if links is None:
                    links = _netlink.list_links(self.ipr)
                link = {"index": msg["index"], "name": name,
                        "master": msg.get_attr("IFLA_MASTER"),
                        "kind": _link_kind(msg)}
                if self._wanted(link, links, patterns, bridge):
                    self._ensure_attached(link, hooks)

    def _forget_interface(self, index, name):
        if not self.plane.up:
            return
        try:
            self.plane.maps.delete("endpoint_map", _maps.U32(index))
        except OSError:
            pass
        if name:
            self._record_interface(name, [], present=False)


def _link_kind(msg):
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None

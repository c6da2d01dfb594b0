# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TC attachment of the microseg programs through pyroute2 (clsact + cls_bpf, direct-action).

Our filter always sits at one (priority, handle) on each hook, so attaching over an existing
one is a netlink "replace": the kernel swaps the program in one step and no packet ever
meets an empty hook.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import fnmatch

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.tcmsg import sched_bpf
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the host
    IPRoute = None
    sched_bpf = None
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = exc

# clsact's fixed parents for the two hooks.
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
FILTER_PRIO = 1          # run before any filter another tool adds at a higher number
FILTER_HANDLE = 0x6d73   # "ms"
NAME_PREFIX = "microseg"


def _teach_pyroute2_bpf_ids():
    """pyroute2 does not decode the program id and tag of a cls_bpf filter; add them.

    The kernel sends TCA_BPF_FLAGS_GEN (9), TCA_BPF_TAG (10) and TCA_BPF_ID (11) after
    TCA_BPF_FLAGS (8); extending the attribute table keeps everything else pyroute2's.
    """
    if sched_bpf is None:
        return
    names = [entry[0] for entry in sched_bpf.options.nla_map]
    if "TCA_BPF_ID" in names:
        return
    if names[-1] != "TCA_BPF_FLAGS":
        return  # an unknown pyroute2 layout: ids stay unknown rather than misread
    sched_bpf.options.nla_map = tuple(sched_bpf.options.nla_map) + (
        ("TCA_BPF_FLAGS_GEN", "uint32"),
        ("TCA_BPF_TAG", "array(uint8)"),
        ("TCA_BPF_ID", "uint32"),
    )


_teach_pyroute2_bpf_ids()


class NetlinkError(Exception):
    pass


def open_route():
    if not HAS_PYROUTE2:
        raise NetlinkError("pyroute2 is not installed: %s" % PYROUTE2_IMPORT_ERROR)
    return IPRoute()


def list_links(ipr):
    """[{name, index, master, kind, up}] for every link of this network namespace."""
    links = []
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        links.append({
            "name": msg.get_attr("IFLA_IFNAME"),
            "index": msg["index"],
            "master": msg.get_attr("IFLA_MASTER"),
            "kind": kind,
            "up": bool(msg["flags"] & 1),
            # Set when the link's peer (veth, netkit) lives in another network namespace.
            "peer_netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
        })
    return links


def has_glob(pattern):
    return any(ch in pattern for ch in "*?[")


# Kinds whose far end is a container: the program's view (TC ingress = what the container
# sends) only holds for them.
CONTAINER_PORT_KINDS = ("veth", "netkit")


def is_container_port(link):
    """A veth (or netkit) whose peer lives in another network namespace: a container's.

    A physical NIC, a bond or VLAN uplink, a dummy, a tap, or a veth whose peer stays in the
    bridge's own namespace is not: filtering it with the container-perspective program
    would police the host's uplink as if it were a container.
    """
    return link.get("kind") in CONTAINER_PORT_KINDS and link.get("peer_netnsid") is not None


def bridge_ports(links, bridge):
    """(container ports, other ports) of bridge, as sorted names; ([], []) without one."""
    masters = [link["index"] for link in links if link["name"] == bridge]
    if not bridge or not masters:
        return [], []
    ports = [link for link in links if link["master"] == masters[0]]
    return (sorted(link["name"] for link in ports if is_container_port(link)),
            sorted(link["name"] for link in ports if not is_container_port(link)))


def is_selected(link, links, patterns, bridge):
    """Whether one link is selected: named or globbed in patterns, or a container port of
    bridge (the rule select_interfaces applies, for one link: the monitor's auto-attach)."""
    if link["name"] == "lo" or link["kind"] == "bridge":
        return False
    if any(p == link["name"] or (has_glob(p) and fnmatch.fnmatchcase(link["name"], p))
           for p in patterns or []):
        return True
    return bool(bridge) and link["name"] in bridge_ports(links, bridge)[0]


def select_interfaces(links, patterns, bridge, missing_ok=False):
    """Resolve names, globs and bridge membership to a sorted list of link names.

    Bridge membership selects container ports only (is_container_port); other ports of the
    bridge are left out unless named or globbed (see bridge_ports for them).
    Raises NetlinkError naming an explicit interface or bridge that does not exist, unless
    missing_ok (the boot restore: the container runtime makes them later, and the monitor
    attaches them then).
    """
    by_name = dict((link["name"], link) for link in links)
    chosen = set()
    missing = []
    for pattern in patterns or []:
        if has_glob(pattern):
            chosen.update(name for name in by_name if fnmatch.fnmatchcase(name, pattern))
        elif pattern in by_name:
            chosen.add(pattern)
        else:
            missing.append(pattern)
    if missing and not missing_ok:
        raise NetlinkError("interfaces: %s does not exist" % ", ".join(sorted(missing)))
    if bridge and bridge not in by_name and missing_ok:
        bridge = None
    if bridge:
        if bridge not in by_name:
            raise NetlinkError("bridge: %s does not exist" % bridge)
        if by_name[bridge]["kind"] != "bridge":
            raise NetlinkError("bridge: %s is a %s link, not a bridge"
                               % (bridge, by_name[bridge]["kind"] or "plain"))
        chosen.update(bridge_ports(links, bridge)[0])
    for name in list(chosen):
        if name == "lo" or by_name[name]["kind"] == "bridge":
            chosen.discard(name)
    return sorted(chosen)


def has_clsact(ipr, index):
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc.get_attr("TCA_KIND") == "clsact":
            return True
    return False


def add_clsact(ipr, index):
    ipr.tc("add", "clsact", index)


def del_clsact(ipr, index):
    ipr.tc("del", "clsact", index)


def filter_name(function, pin_path):
    """The name our filters carry: the program and the pin directory of its instance.

    Every instance uses the same priority and handle, so the name is what tells two
    instances in one network namespace apart.
    """
    return "%s@%s" % (function, pin_path.rstrip("/"))


FOREIGN_HOLDER = "a BPF filter no microseg instance attached (named %r)"


def holder_text(held_by):
    """held_by as a sentence's object: 'the microseg instance pinned at /x' or the foreign."""
    return "the microseg instance pinned at %s" % held_by if held_by.startswith("/") else held_by


def split_filter_name(name):
    """(program, pin directory) from a filter name; the directory is None for a name
    without one (no microseg instance attached it)."""
    program, _at, owner = (name or "").partition("@")
    return program or None, owner or None


def hook_filters(ipr, index, hook, pin_path=None):
    """Filters on one hook:
    [{prio, handle, kind, name, program, prog_id, tag, owner, ours, held_by}].

    A BPF filter at our priority and handle is ours when its name records pin_path.
    held_by says who else holds the slot: another instance's pin directory, or
    holder_text() of a filter no instance named. Without pin_path any such filter is ours.
    """
    out = []
    for msg in ipr.get_filters(index=index, parent=PARENTS[hook]):
        options = msg.get_attr("TCA_OPTIONS")
        if not options:
            continue  # the per-priority chain header, not a filter
        kind = msg.get_attr("TCA_KIND")
        entry = {"prio": msg["info"] >> 16, "handle": msg["handle"], "kind": kind,
                 "name": None, "prog_id": None, "tag": None}
        if kind == "bpf":
            entry["name"] = options.get_attr("TCA_BPF_NAME")
            entry["prog_id"] = options.get_attr("TCA_BPF_ID")
            tag = options.get_attr("TCA_BPF_TAG")
            entry["tag"] = "".join("%02x" % b for b in tag) if tag else None
        slot = kind == "bpf" and entry["prio"] == FILTER_PRIO and entry["handle"] == FILTER_HANDLE
        entry["program"], owner = split_filter_name(entry["name"])
        entry["owner"] = owner if slot else None
        mine = pin_path is None or entry["owner"] == pin_path.rstrip("/")
        entry["ours"] = slot and mine
        entry["held_by"] = (entry["owner"] or FOREIGN_HOLDER % (entry["name"] or "")) \
            if slot and not mine else None
        out.append(entry)
    return out


def our_filter(ipr, index, hook, pin_path=None):
    for entry in hook_filters(ipr, index, hook, pin_path):
        if entry["ours"]:
            return entry
    return None


def attach(ipr, index, hook, prog_fd, name):
    """Create or atomically replace our filter on a hook."""
    ipr.tc("replace-filter", "bpf", index, FILTER_HANDLE, fd=prog_fd, name=name,
           parent=PARENTS[hook], classid=1, direct_action=True, prio=FILTER_PRIO)


def detach(ipr, index, hook):
    ipr.tc("del-filter", "bpf", index, FILTER_HANDLE, parent=PARENTS[hook], prio=FILTER_PRIO)

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Endpoint addresses learned from the container side of each host-side veth.

The data plane's L2 trust checks (anti-spoofing, ARP, receive side) need each endpoint's
address. Besides the `endpoints` option (given), microseg-monitor learns them: a veth
whose peer lives in another network namespace names that namespace by its nsid; the
namespace is found among /run/netns and the processes' namespaces, and its view of the
peer (IPv4 address, prefix, MAC) is read over a netlink socket opened inside it. Learned
entries carry ENDPOINT_FLAG_LEARNED: a given entry is never overwritten, and
microseg_program leaves learned ones alone.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import os
import socket

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink

CLONE_NEWNET = 0x40000000
NETNS_DIRS = ("/run/netns", "/var/run/netns")


def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_route_in(path):
    """An IPRoute socket bound to the network namespace at path (this thread returns to
    its own namespace before the call returns)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return _netlink.open_route()
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def namespace_files():
    """Paths naming network namespaces other than ours, one per namespace."""
    seen = set()
    try:
        own = os.stat("/proc/thread-self/ns/net")
        seen.add((own.st_dev, own.st_ino))
    except OSError:
        pass
    candidates = []
    for folder in NETNS_DIRS:
        try:
            candidates.extend(os.path.join(folder, name) for name in sorted(os.listdir(folder)))
        except OSError:
            pass
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        pids = []
    candidates.extend("/proc/%s/ns/net" % pid for pid in pids)
    out = []
    for path in candidates:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        out.append(path)
    return out


class NamespaceFinder:
    """nsid (as our namespace numbers it) -> a path to that namespace, rescanned only when
    an nsid is not known yet."""

    def __init__(self, ipr):
        self.ipr = ipr
        self.paths = {}

    def _scan(self):
        self.paths = {}
        for path in namespace_files():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                nsid = self.ipr.get_netnsid(fd=fd).get("nsid")
            except Exception:  # pylint: disable=broad-except
                nsid = None
            finally:
                os.close(fd)
            if nsid is not None and nsid >= 0:
                self.paths.setdefault(nsid, path)

    def path(self, nsid):
        if nsid not in self.paths or not os.path.exists(self.paths[nsid]):
            self._scan()
        return self.paths.get(nsid)


def peer_address(path, peer_index):
    """(ipv4, prefixlen, mac bytes) of interface peer_index inside the namespace at path,
    or None when it has no IPv4 address (the first global one counts)."""
    ipr = open_route_in(path)
    try:
        links = ipr.get_links(peer_index)
        if not links:
            return None
        mac_text = links[0].get_attr("IFLA_ADDRESS") or ""
        addresses = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in
                     ipr.get_addr(family=socket.AF_INET, index=peer_index)
                     if a["scope"] == 0]
    finally:
        ipr.close()
    if not addresses:
        return None
    mac = bytes.fromhex(mac_text.replace(":", "")) if mac_text else b""
    return addresses[0][0], addresses[0][1], mac


def learn(ipr, finder, indexes):
    """{host-side ifindex: EndpointValue} learned for those of `indexes` that are veths
    with a peer in another namespace that has an IPv4 address."""
    out = {}
    for link in ipr.get_links():
        if indexes is not None and link["index"] not in indexes:
            continue
        nsid = link.get_attr("IFLA_LINK_NETNSID")
        peer = link.get_attr("IFLA_LINK")
        if nsid is None or not peer:
            continue
        path = finder.path(nsid)
        if path is None:
            continue
        try:
            found = peer_address(path, peer)
        except (OSError, Exception):  # pylint: disable=broad-except
            continue      # the namespace went away between the scan and the read
        if found is None:
            continue
        address, prefixlen, mac = found
        value = _maps.EndpointValue(ip=_maps.ip_to_u32(address), prefixlen=prefixlen,
                                    flags=_abi.ENDPOINT_FLAG_LEARNED)
        if len(mac) == 6:
            value.flags |= _abi.ENDPOINT_FLAG_MAC
            value.mac[:] = list(mac)
        out[link["index"]] = value
    return out


def write_learned(pinned, learned):
    """Make the learned entries of endpoint_map equal `learned`; given entries win.
    Returns the number of entries written or deleted."""
    current = dict((key.value, value) for key, value in pinned.items("endpoint_map"))
    changes = 0
    for index, value in current.items():
        if value.flags & _abi.ENDPOINT_FLAG_LEARNED and index not in learned:
            pinned.delete("endpoint_map", _maps.U32(index))
            changes += 1
    for index, value in learned.items():
        have = current.get(index)
        if have is not None and not have.flags & _abi.ENDPOINT_FLAG_LEARNED:
            continue
        if have is not None and have.pack() == value.pack():
            continue
        try:
            pinned.update("endpoint_map", _maps.U32(index), value)
        except OSError:
            continue     # map full: that endpoint goes unchecked
        changes += 1
    return changes

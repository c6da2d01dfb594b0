# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""lookup_policy() of files/bpf/lib/policy.h in Python: the walk the kernel does for the
first packet of a flow, over any source of map lookups.

``decide(lookup, policy_set, default_action, packet)`` takes ``lookup(map name, key mirror)
-> value mirror or None``, so the one walk runs over two sources:

* ``PinnedMaps.lookup`` (_maps.py): the pinned maps themselves, the kernel doing the hash and
  longest-prefix lookups of its own tries - what microseg_explain reads;
* ``Entries``: compiled entries in a list (a CompiledPolicy, or the five map lists of both
  sets), looked up here the way an LPM trie is - what the compiler's unit tests walk.

Change the walk in policy.h, change it here (and the compiler that writes the maps).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps

MAP_NAMES = _compiler.MAP_NAMES
LPM_MAPS = MAP_NAMES[1:]
DEFAULT = "default"


class Decision:
    """What lookup_policy() decides: action (a name), policy_id (0: the default action),
    decided_at (the map whose entry decided, or "default"), steps: (map name, key mirror,
    value mirror or None) of every lookup made, in order."""

    __slots__ = ("action", "policy_id", "decided_at", "steps")

    def __init__(self, action, policy_id, decided_at, steps):
        self.action = action
        self.policy_id = policy_id
        self.decided_at = decided_at
        self.steps = steps

    def pair(self):
        return self.action, self.policy_id

    def describe_steps(self):
        """One line per lookup: the map, the key's fields that matter, what it found."""
        out = []
        for name, key, value in self.steps:
            if name == "policy_map":
                what = "exact %s:%d -> %s:%d proto %d" % (
                    _maps.u32_to_ip(key.src_ip), key.src_port, _maps.u32_to_ip(key.dst_ip),
                    key.dst_port, key.protocol)
            elif name in ("ip_range_map", "local_range_map"):
                what = "class %#x ip %s" % (key.class_id, _maps.u32_to_ip(key.ip))
            elif name == "port_range_map":
                what = "class %#x proto %d port %d" % (key.class_id, key.protocol,
                                                       key.port[0] << 8 | key.port[1])
            else:
                what = "class %#x sport %d" % (key.class_id, key.port[0] << 8 | key.port[1])
            if value is None:
                found = "miss"
            elif name == "policy_map" or value.flags & _abi.RANGE_FLAG_FINAL:
                found = "%s, policy id %d" % (_abi.ACTION_NAMES.get(value.action, value.action),
                                              value.policy_id)
            else:
                found = "next class %#x" % value.next_class
            out.append("%s: %s: %s" % (name, what, found))
        return out


def _port_key(cls, class_id, port, **fields):
    key = cls(class_id=class_id, **fields)
    key.port[0], key.port[1] = _maps.port_to_bytes(port)
    return key


def decide(lookup, policy_set, default_action, packet):
    """The Decision for the first packet of a flow, as lookup_policy() takes it.

    default_action: {"egress": name, "ingress": name} (the config_map's). packet: direction
    ("egress" or "ingress"), src and dst (dotted quads), protocol (a number), src_port and
    dst_port (ignored but for TCP and UDP: the program parses no other ports).
    """
    direction = _abi.DIRECTIONS[packet["direction"]]
    proto = packet["protocol"]
    sport, dport = packet["src_port"], packet["dst_port"]
    if proto not in _abi.PORT_PROTOCOLS:
        sport = dport = 0
    src, dst = _maps.ip_to_u32(packet["src"]), _maps.ip_to_u32(packet["dst"])
    steps = []

    def step(name, key):
        value = lookup(name, key)
        steps.append((name, key, value))
        return value

    found = step("policy_map", _maps.PolicyKey(
        src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, protocol=proto,
        direction=direction, policy_set=policy_set))
    if found is not None:
        return Decision(_abi.ACTION_NAMES.get(found.action, found.action), found.policy_id,
                        "policy_map", steps)
    default = Decision(default_action[packet["direction"]], 0, DEFAULT, steps)
    remote, local = (dst, src) if direction == _abi.MS_DIR_EGRESS else (src, dst)
    rv = step("ip_range_map", _maps.LpmKey(
        prefixlen=_abi.MS_LPM_IP_FULL, class_id=_abi.ms_lpm_root_class(policy_set, direction),
        ip=remote))
    decided_at = "ip_range_map"
    if rv is None:
        return default
    if not rv.flags & _abi.RANGE_FLAG_FINAL:
        rv = step("local_range_map", _maps.LpmKey(prefixlen=_abi.MS_LPM_IP_FULL,
                                                  class_id=rv.next_class, ip=local))
        decided_at = "local_range_map"
        if rv is None:
            return default
    if not rv.flags & _abi.RANGE_FLAG_FINAL:
        rv = step("port_range_map", _port_key(_maps.PortLpmKey, rv.next_class, dport,
                                              prefixlen=_abi.MS_LPM_PORT_FULL, protocol=proto))
        decided_at = "port_range_map"
        if rv is None:
            return default
    if not rv.flags & _abi.RANGE_FLAG_FINAL:
        rv = step("sport_range_map", _port_key(_maps.SportLpmKey, rv.next_class, sport,
                                               prefixlen=_abi.MS_LPM_SPORT_FULL))
        decided_at = "sport_range_map"
        if rv is None or not rv.flags & _abi.RANGE_FLAG_FINAL:
            return default      # a chain longer than four steps: lookup_policy() defaults
    return Decision(_abi.ACTION_NAMES.get(rv.action, rv.action), rv.policy_id, decided_at,
                    steps)


class Entries:
    """Compiled entries, looked up as the kernel's maps are: policy_map by its exact key,
    the LPM maps indexed by class id, the longest prefix over the big-endian bits after
    prefixlen winning (a later entry with the same prefix replaces an earlier one).

    compiled: a CompiledPolicy, or any object with the five map lists as attributes of
    (key, value) mirrors (both policy sets may be in them, as in the real maps).
    """

    def __init__(self, compiled):
        self.exact = {}
        for key, value in getattr(compiled, "policy_map"):
            self.exact[key.pack()] = value
        self.tries = {}
        for name in LPM_MAPS:
            by_class = self.tries[name] = {}
            for key, value in getattr(compiled, name):
                data = key.pack()[4:]
                by_class.setdefault(key.class_id, []).append(
                    (key.prefixlen, int.from_bytes(data, "big"), len(data) * 8, value))

    def lookup(self, name, key):
        if name == "policy_map":
            return self.exact.get(key.pack())
        data = key.pack()[4:]
        want = int.from_bytes(data, "big")
        best, best_len = None, -1
        for plen, have, width, value in self.tries[name].get(key.class_id, ()):
            shift = width - plen
            if have >> shift == want >> shift and plen >= best_len:
                best, best_len = value, plen
        return best

    def decide(self, policy_set, default_action, packet):
        """(action, policy_id) for the first packet of a flow."""
        return decide(self.lookup, policy_set, default_action, packet).pair()

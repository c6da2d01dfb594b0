# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""decide() of files/bpf/microseg.bpf.c, in Python, over compiled entries (no kernel).

Used to check the compiler against the model quickly and without root; the real kernel is
checked by tests/functional/test_differential.py.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from ansible_collections.ebpf.microseg.plugins.module_utils import _maps


def _bits(data):
    return "".join(format(b, "08b") for b in data)


def _lpm(entries, data):
    """Longest-prefix match of data (bytes after prefixlen) over (key, value) entries."""
    want = _bits(data)
    best, best_len = None, -1
    for key, value in entries:
        raw = key.pack()[4:]
        plen = key.prefixlen
        if _bits(raw)[:plen] == want[:plen] and plen > best_len:
            best, best_len = value, plen
    return best


def simulate(compiled, policy_set, default_action, direction, src, dst, proto, sport, dport):
    """'allow' | 'deny' | 'log' as the kernel would decide the first packet."""
    d = 0 if direction == "egress" else 1
    if proto not in (6, 17):
        sport = dport = 0
    for key, value in compiled.policy_map:
        if (key.src_ip, key.dst_ip, key.src_port, key.dst_port, key.protocol, key.direction,
                key.policy_set) == (_maps.ip_to_u32(src), _maps.ip_to_u32(dst), sport, dport,
                                    proto, d, policy_set):
            return _maps.ACTION_NAMES[value.action]
    default = default_action[direction]
    remote, local = (dst, src) if d == 0 else (src, dst)
    lk = _maps.LpmKey(prefixlen=64, class_id=(policy_set << 1) | d, ip=_maps.ip_to_u32(remote))
    rv = _lpm(compiled.ip_range_map, lk.pack()[4:])
    if rv is None:
        return default
    if not rv.flags & 1:
        lk = _maps.LpmKey(prefixlen=64, class_id=rv.next_class, ip=_maps.ip_to_u32(local))
        rv = _lpm(compiled.local_range_map, lk.pack()[4:])
        if rv is None:
            return default
    if not rv.flags & 1:
        pk = _maps.PortLpmKey(prefixlen=56, class_id=rv.next_class, protocol=proto)
        pk.port[0], pk.port[1] = _maps.port_to_bytes(dport)
        rv = _lpm(compiled.port_range_map, pk.pack()[4:])
        if rv is None:
            return default
    if not rv.flags & 1:
        sk = _maps.SportLpmKey(prefixlen=48, class_id=rv.next_class)
        sk.port[0], sk.port[1] = _maps.port_to_bytes(sport)
        rv = _lpm(compiled.sport_range_map, sk.pack()[4:])
        if rv is None or not rv.flags & 1:
            return default
    return _maps.ACTION_NAMES[rv.action]

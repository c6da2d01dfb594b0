# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rules -> map entries, so the kernel decides with a bounded number of lookups.

The kernel (decide() in files/bpf/microseg.bpf.c) looks up the exact 5-tuple, then walks
longest-prefix stages: remote address, container address, protocol + destination port,
source port. Every stage value either ends the walk with a verdict or names the class of
the next stage. All the specificity reasoning happens here:

* Stage 1 entries are the remote prefixes of all rules. The longest prefix N holding the
  remote address determines the candidates exactly: the rules with a remote CIDR that
  contains N (prefixes holding one address are nested). Same for the container side.
* For the ports, the port space is cut at every rule boundary into intervals with one
  candidate set; each interval's winner (or next class) is written as aligned blocks.
* Classes are deduplicated by their candidate set, which keeps the entry count close to
  the number of distinct situations rather than rules x prefixes.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    ACTION_RANK, PORT_PROTOCOLS, port_specificity)

DIR_INDEX = {"egress": 0, "ingress": 1}
ALL_PORTS = (0, 65535)


class CompiledPolicy:
    def __init__(self):
        self.policy_map = []
        self.ip_range_map = []
        self.local_range_map = []
        self.port_range_map = []
        self.sport_range_map = []
        self.rule_ids = {}

    def counts(self):
        return dict((name, len(getattr(self, name))) for name in
                    ("policy_map", "ip_range_map", "local_range_map", "port_range_map",
                     "sport_range_map"))


class _Candidate:
    """A rule with what is already known of its rank at this point of the walk."""

    __slots__ = ("rule", "index", "remote_len", "local_len", "dspec")

    def __init__(self, rule, index, remote_len=None, local_len=None, dspec=None):
        self.rule = rule
        self.index = index
        self.remote_len = remote_len
        self.local_len = local_len
        self.dspec = dspec

    def signature(self):
        return (self.index, self.remote_len, self.local_len, self.dspec)


def _rank(cand, sspec):
    rule = cand.rule
    return (cand.remote_len, cand.local_len, cand.dspec, sspec,
            0 if rule.protocol is None else 1, ACTION_RANK[rule.action])


def _winner(cands, sspec_of):
    """The model's choice: highest rank, the earliest rule on a full tie."""
    best, best_cand = None, None
    for cand in sorted(cands, key=lambda c: c.index):
        sspec = sspec_of(cand)
        if sspec is None:
            continue
        rank = _rank(cand, sspec)
        if best is None or rank > best:
            best, best_cand = rank, cand
    return best_cand


def _blocks(low, high):
    """Split [low, high] of a 16-bit space into aligned power-of-two blocks (start, bits)."""
    out = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        bits = size.bit_length() - 1
        out.append((low, 16 - bits))
        low += size
    return out


def _intervals(boundaries):
    """Elementary intervals of 0..65535 cut at the given (low, high) ranges."""
    cuts = set([0, 65536])
    for low, high in boundaries:
        cuts.add(low)
        cuts.add(high + 1)
    points = sorted(cuts)
    return [(points[i], points[i + 1] - 1) for i in range(len(points) - 1)]


def _range_value(cand=None, next_class=None):
    if cand is None:
        return _maps.RangeValue(next_class=next_class)
    return _maps.RangeValue(policy_id=cand.rule.policy_id, action=_maps.ACTIONS[cand.rule.action],
                            flags=_maps.RANGE_FLAG_FINAL)


class _Builder:
    def __init__(self, policy_set):
        self.policy_set = policy_set
        self.out = CompiledPolicy()
        self.next_id = 4
        self.classes = {}

    def class_id(self, stage, signature):
        """A class per distinct candidate situation; returns (id, new?)."""
        key = (stage, signature)
        if key in self.classes:
            return self.classes[key], False
        cid = (self.policy_set << 31) | self.next_id
        self.next_id += 1
        self.classes[key] = cid
        return cid, True

    # -- exact rules --------------------------------------------------------------------
    def exact(self, rule):
        src, dst = rule.src[0][0], rule.dst[0][0]
        for direction in rule.directions:
            key = _maps.PolicyKey(
                src_ip=_maps.ip_to_u32(_int_to_ip(src)), dst_ip=_maps.ip_to_u32(_int_to_ip(dst)),
                src_port=rule.src_ports[0][0], dst_port=rule.dst_ports[0][0],
                protocol=rule.protocol, direction=DIR_INDEX[direction],
                policy_set=self.policy_set)
            value = _maps.PolicyValue(policy_id=rule.policy_id,
                                      action=_maps.ACTIONS[rule.action])
            self.out.policy_map.append((key, value))

    # -- stage 1: remote prefix -----------------------------------------------------------
    def direction(self, direction, rules):
        remote_of = (lambda r: r.dst) if direction == "egress" else (lambda r: r.src)
        nodes = set()
        for _index, rule in rules:
            nets = remote_of(rule)
            nodes.update(nets if nets is not None else [(0, 0)])
        stage1 = (self.policy_set << 1) | DIR_INDEX[direction]
        # Rules by remote prefix: a node's candidates are the rules at its ancestors, so
        # each node costs 33 dict lookups rather than a scan of every rule.
        by_prefix = {}
        for index, rule in rules:
            for net in remote_of(rule) or [(0, 0)]:
                by_prefix.setdefault(net, []).append((index, rule))
        for node in sorted(nodes, key=lambda n: (n[1], n[0])):
            found = {}
            for plen in range(node[1], -1, -1):
                mask = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
                for index, rule in by_prefix.get((node[0] & mask, plen), ()):
                    if index not in found:
                        found[index] = (rule, plen)   # longest containing CIDR first
            cands = [_Candidate(rule, index, remote_len=plen)
                     for index, (rule, plen) in sorted(found.items())]
            value = self.local_stage(direction, cands)
            key = _maps.LpmKey(prefixlen=32 + node[1], class_id=stage1,
                               ip=_maps.ip_to_u32(_int_to_ip(node[0])))
            self.out.ip_range_map.append((key, value))

    # -- stage 2: container prefix -------------------------------------------------------
    def local_stage(self, direction, cands):
        local_of = (lambda r: r.src) if direction == "egress" else (lambda r: r.dst)
        if all(c.rule.protocol is None and local_of(c.rule) is None for c in cands):
            for cand in cands:
                cand.local_len = 0
                cand.dspec = 0
            return _range_value(_winner(cands, lambda c: 0))
        # The container side is src for egress and dst for ingress: never share across.
        cid, new = self.class_id(2, (direction,) + tuple(c.signature() for c in cands))
        if new:
            by_prefix = {}
            for cand in cands:
                for net in local_of(cand.rule) or [(0, 0)]:
                    by_prefix.setdefault(net, []).append(cand)
            for node in sorted(by_prefix, key=lambda n: (n[1], n[0])):
                found = {}
                for plen in range(node[1], -1, -1):
                    mask = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
                    for cand in by_prefix.get((node[0] & mask, plen), ()):
                        if cand.index not in found:
                            found[cand.index] = (cand, plen)
                sub = [_Candidate(cand.rule, index, cand.remote_len, llen)
                       for index, (cand, llen) in sorted(found.items())]
                key = _maps.LpmKey(prefixlen=32 + node[1], class_id=cid,
                                   ip=_maps.ip_to_u32(_int_to_ip(node[0])))
                self.out.local_range_map.append((key, self.port_stage(sub)))
        return _range_value(next_class=cid)

    # -- stage 3: protocol and destination port -------------------------------------------
    def port_stage(self, cands):
        if all(c.rule.protocol is None for c in cands):
            for cand in cands:
                cand.dspec = 0
            return _range_value(_winner(cands, lambda c: 0))
        cid, new = self.class_id(3, tuple(c.signature() for c in cands))
        if not new:
            return _range_value(next_class=cid)
        any_proto = [c for c in cands if c.rule.protocol is None]
        if any_proto:
            for cand in any_proto:
                cand.dspec = 0
            key = _maps.PortLpmKey(prefixlen=32, class_id=cid)
            winner = _winner(any_proto, lambda c: 0)
            self.out.port_range_map.append((key, _range_value(winner)))
        for proto in sorted(set(c.rule.protocol for c in cands if c.rule.protocol is not None)):
            mine = [c for c in cands if c.rule.protocol in (proto, None)]
            if proto not in PORT_PROTOCOLS:
                sub = [_Candidate(c.rule, c.index, c.remote_len, c.local_len, 0) for c in mine]
                key = _maps.PortLpmKey(prefixlen=40, class_id=cid, protocol=proto)
                self.out.port_range_map.append((key, _range_value(_winner(sub, lambda c: 0))))
                continue
            cuts = []
            for cand in mine:
                cuts.extend(cand.rule.dst_ports or [])
            runs = []
            for low, high in _intervals(cuts):
                sub = []
                for cand in mine:
                    dspec = port_specificity(cand.rule.dst_ports, low)
                    if dspec is not None:
                        sub.append(_Candidate(cand.rule, cand.index, cand.remote_len,
                                              cand.local_len, dspec))
                value = self.sport_stage(sub) if sub else None
                outcome = None if value is None else value.pack()
                if runs and runs[-1][2] == outcome:
                    runs[-1][1] = high
                else:
                    runs.append([low, high, outcome, value])
            for low, high, _outcome, value in runs:
                if value is None:
                    # No candidate: then no any-protocol rule exists either (those match
                    # every port), so the lookup misses and the default decides.
                    continue
                for start, bits in _blocks(low, high):
                    key = _maps.PortLpmKey(prefixlen=40 + bits, class_id=cid, protocol=proto)
                    key.port[0], key.port[1] = _maps.port_to_bytes(start)
                    self.out.port_range_map.append((key, value))
        return _range_value(next_class=cid)

    # -- stage 4: source port ----------------------------------------------------------
    def sport_stage(self, cands):
        if all(c.rule.src_ports is None for c in cands):
            return _range_value(_winner(cands, lambda c: 0))
        cid, new = self.class_id(4, tuple(c.signature() for c in cands))
        if new:
            cuts = []
            for cand in cands:
                cuts.extend(cand.rule.src_ports or [])
            runs = []
            for low, high in _intervals(cuts):
                win = _winner(cands, lambda c, p=low: port_specificity(c.rule.src_ports, p))
                outcome = None if win is None else win.index
                if runs and runs[-1][2] == outcome:
                    runs[-1][1] = high
                else:
                    runs.append([low, high, outcome, win])
            for low, high, _outcome, win in runs:
                if win is None:
                    continue    # no candidate: the miss means the default
                for start, bits in _blocks(low, high):
                    key = _maps.SportLpmKey(prefixlen=32 + bits, class_id=cid)
                    key.port[0], key.port[1] = _maps.port_to_bytes(start)
                    self.out.sport_range_map.append((key, _range_value(win)))
        return _range_value(next_class=cid)


def _int_to_ip(value):
    return "%d.%d.%d.%d" % (value >> 24 & 255, value >> 16 & 255, value >> 8 & 255, value & 255)


def compile_policy(policy, policy_set):
    """Map entries for one policy set (0 or 1) of the double-buffered policy maps."""
    builder = _Builder(policy_set)
    for rule in policy.rules:
        builder.out.rule_ids[rule.name] = rule.policy_id
    for direction in ("egress", "ingress"):
        rules = []
        for index, rule in enumerate(policy.rules):
            if direction not in rule.directions:
                continue
            if rule.exact:
                if direction == rule.directions[0]:
                    builder.exact(rule)
                continue
            rules.append((index, rule))
        if rules:
            builder.direction(direction, rules)
    return builder.out

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""Rules -> map entries, so the kernel decides with a bounded number of lookups.

decide() in files/bpf/lib/policy.h looks up the exact 5-tuple (policy_map), then walks
up to four longest-prefix stages: remote address (ip_range_map), container address
(local_range_map), protocol + destination port (port_range_map), source port
(sport_range_map). Each stage value either ends the walk (RANGE_FLAG_FINAL: policy_id and
action) or names the class the next stage looks up; a miss means the default action.
All the specificity reasoning of the reference model (_verdict.py) happens here:

* Exact rules (tcp/udp, /32 both sides, one port each side) go to policy_map only: a
  packet that matches one exactly is won by it; no other packet can match it.
* Stage 1 keys are every remote prefix of the direction's rules (/0 for "any"). The
  longest key N holding the remote address fixes the candidates: the rules with a remote
  prefix containing N, each at the length of its longest such prefix.
* Stage 2 does the same for the container's address within one candidate set.
* Stage 3 cuts the destination port space of each protocol at every rule boundary into
  intervals with one candidate set and writes them as aligned power-of-two blocks; the
  any-protocol entry (prefixlen 32) answers for protocols and ports not written.
* Stage 4 does the same for source ports.

At every stage the candidates that can no longer win are dropped: the best rule that
matches whatever the remaining fields are ("unconditional") beats every rule that is less
specific on the fields already known. When it is the only one left the stage ends the
walk. Classes are shared between identical candidate situations, and a stage key whose
value equals what the longest-prefix match would find without it is not written.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import struct

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import rank as _verdict_rank
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    ACTION_RANK, PORT_PROTOCOLS, port_specificity)

MAP_NAMES = ("policy_map", "ip_range_map", "local_range_map", "port_range_map",
             "sport_range_map")
ANY_PREFIX = (0, 0)
# A port key matched on class and protocol, before any port bit.
PORT_KEY_PROTOCOL_LEN = _abi.MS_LPM_CLASS_BITS + _abi.MS_LPM_PROTOCOL_BITS


class CompiledPolicy:
    """Entries for one policy set, kept packed as the kernel takes them.

    packed[name] is a list of (key bytes, value bytes). The attribute of each map's name
    (policy_map, ip_range_map, ...) gives the same entries as ctypes mirrors, for readers
    that want fields; the converge itself only moves bytes.
    """

    def __init__(self, policy_set=0):
        self.policy_set = policy_set
        self.packed = dict((name, []) for name in MAP_NAMES)
        self.rule_ids = {}

    def add(self, name, pairs):
        self.packed[name].extend((key.pack(), value.pack()) for key, value in pairs)

    def mirrors(self, name):
        spec = _maps.MAP_SPEC[name]
        return [(spec.key.unpack(key), spec.value.unpack(value))
                for key, value in self.packed[name]]

    policy_map = property(lambda self: self.mirrors("policy_map"))
    ip_range_map = property(lambda self: self.mirrors("ip_range_map"))
    local_range_map = property(lambda self: self.mirrors("local_range_map"))
    port_range_map = property(lambda self: self.mirrors("port_range_map"))
    sport_range_map = property(lambda self: self.mirrors("sport_range_map"))

    def counts(self):
        return dict((name, len(self.packed[name])) for name in MAP_NAMES)

    def entries(self):
        """(map name, [(key, value)] mirrors) for every policy map, in a fixed order."""
        return [(name, self.mirrors(name)) for name in MAP_NAMES]


# policy_map entries packed without mirror objects (an exact rule set can be 100,000+
# rules); tests/unit/.../test_compiler.py checks them against the PolicyKey/PolicyValue
# mirrors, which tests/functional/test_layout.py checks against the C header.
_POLICY_ADDRESSES = struct.Struct("!II")        # src_ip, dst_ip in network byte order
_POLICY_KEY_REST = struct.Struct("=HHBBBB")     # ports, protocol, direction, set, pad
_POLICY_VALUE = struct.Struct("=IBBHQQ")        # policy_id, action, flags, reserved, hits


class _Cand:
    """A rule with what is known of its rank at this point of the walk."""

    __slots__ = ("rule", "remote_len", "local_len", "dspec")

    def __init__(self, rule, remote_len, local_len=0, dspec=0):
        self.rule = rule
        self.remote_len = remote_len
        self.local_len = local_len
        self.dspec = dspec

    def key(self, sspec=0):
        """The model's rank (non-exact rules), then the earlier rule on a full tie."""
        rule = self.rule
        return (rule.tier_rank, self.remote_len, self.local_len, self.dspec, sspec,
                0 if rule.protocol is None else 1, ACTION_RANK[rule.action], -rule.index)


def _best(cands, sspec_of=None):
    best, best_key = None, None
    for cand in cands:
        key = cand.key(sspec_of(cand) if sspec_of else 0)
        if best_key is None or key > best_key:
            best, best_key = cand, key
    return best


def _prune(cands, unconditional, known):
    """(live candidates, winner or None).

    unconditional(c): c matches whatever the fields still to be looked at are, so its rank
    is fixed. known(c): the part of the rank already fixed for every candidate. A rule
    less specific on the known part than the best unconditional one can never win.
    """
    fixed = [c for c in cands if unconditional(c)]
    if not fixed:
        return sorted(cands, key=lambda c: c.rule.index), None
    top = _best(fixed)
    live = [top] + [c for c in cands if not unconditional(c) and known(c) >= known(top)]
    live.sort(key=lambda c: c.rule.index)
    return live, (top if len(live) == 1 else None)


def _signature(live, fields):
    """What a class depends on; a lone candidate's lengths do not matter."""
    if len(live) == 1:
        return (live[0].rule.index,)
    return tuple((c.rule.index,) + tuple(getattr(c, f) for f in fields) for c in live)


def _final(cand):
    rule = cand.rule
    return _maps.RangeValue(policy_id=rule.policy_id, action=_abi.ACTIONS[rule.action],
                            flags=_abi.RANGE_FLAG_FINAL)


def _next(class_id):
    return _maps.RangeValue(next_class=class_id)


def _blocks(low, high):
    """[low, high] of the 16-bit port space as aligned blocks: [(start, prefix bits)]."""
    out = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        out.append((low, 16 - (size.bit_length() - 1)))
        low += size
    return out


def _intervals(ranges):
    """Elementary intervals of 0..65535 cut at the bounds of ranges."""
    cuts = set([0, 65536])
    for low, high in ranges:
        cuts.add(low)
        cuts.add(high + 1)
    points = sorted(cuts)
    return [(points[i], points[i + 1] - 1) for i in range(len(points) - 1)]


def _runs(intervals, outcome_of):
    """Consecutive intervals with the same outcome joined: [(low, high, outcome)]."""
    runs = []
    for low, high in intervals:
        outcome = outcome_of(low)
        same = runs and _same(runs[-1][2], outcome)
        if same:
            runs[-1][1] = high
        else:
            runs.append([low, high, outcome])
    return runs


def _same(a, b):
    if a is None or b is None:
        return a is b
    return a.pack() == b.pack()


def _u32(address):
    """Host-order int -> the u32 the kernel stores (network byte order in memory)."""
    return struct.unpack("=I", struct.pack("!I", address))[0]


_MASKS = [(0xffffffff << (32 - plen)) & 0xffffffff if plen else 0 for plen in range(33)]


def _ancestors(prefix, lengths=None):
    """prefix and every shorter prefix holding it, longest first.

    lengths: only the prefix lengths that can matter (those some node has), longest
    first; a policy uses a handful of lengths, so this skips most of the 33.
    """
    network, plen = prefix
    for length in (range(plen, -1, -1) if lengths is None else lengths):
        if length <= plen:
            yield network & _MASKS[length], length


def _lengths(nodes):
    return sorted(set(plen for _network, plen in nodes), reverse=True)


def _by_longest_holder(nodes_rules):
    """{node: [(item, length of item's longest prefix holding node)]}, each item once.

    nodes_rules maps a prefix to the items that list it; every listed prefix is a node.
    """
    out = {}
    lengths = _lengths(nodes_rules)
    for node in nodes_rules:
        seen = {}
        for ancestor in _ancestors(node, lengths):
            for item in nodes_rules.get(ancestor, ()):
                if id(item) not in seen:
                    seen[id(item)] = (item, ancestor[1])
        out[node] = list(seen.values())
    return out


def _lpm_entries(values, make_key):
    """Keys for prefix -> value, leaving out those that equal their nearest ancestor's."""
    pairs = []
    lengths = _lengths(values)
    for node in sorted(values, key=lambda n: (n[1], n[0])):
        parent = None
        for ancestor in _ancestors(node, lengths):
            if ancestor != node and ancestor in values:
                parent = ancestor
                break
        if parent is not None and _same(values[parent], values[node]):
            continue
        pairs.append((make_key(node), values[node]))
    return pairs


class _Compiler:
    def __init__(self, policy, policy_set):
        self.policy = policy
        self.policy_set = policy_set
        self.out = CompiledPolicy(policy_set)
        self.classes = {}
        self.counter = _abi.MS_LPM_CLASS_BASE
        self.higher_tiers = {}      # tier_rank -> the non-exact rules of the tiers above

    def class_id(self, key):
        """(class id, new?) for one candidate situation of one stage."""
        if key in self.classes:
            return self.classes[key], False
        if self.counter >= 1 << _abi.MS_LPM_CLASS_SET_BIT:
            raise ValueError("policy too large: class ids exhausted")
        cid = (self.policy_set << _abi.MS_LPM_CLASS_SET_BIT) | self.counter
        self.counter += 1
        self.classes[key] = cid
        return cid, True

    # -- exact rules ----------------------------------------------------------------------
    def exact(self):
        """policy_map entries: an exact rule wins its 5-tuple, unless a rule of a higher
        tier matches it too (then no entry: the LPM walk, which holds the other rules,
        finds that one)."""
        seen = set()
        out = self.out.packed["policy_map"]
        exact = sorted((rule for rule in self.policy.rules if rule.exact),
                       key=lambda rule: -rule.tier_rank)     # stable: then the order listed
        for rule in exact:
            addresses = _POLICY_ADDRESSES.pack(rule.src_prefixes[0][0], rule.dst_prefixes[0][0])
            value = _POLICY_VALUE.pack(rule.policy_id, _abi.ACTIONS[rule.action], 0, 0, 0, 0)
            for direction in rule.directions:
                if self._outranked(rule, direction):
                    continue
                key = addresses + _POLICY_KEY_REST.pack(
                    rule.src_ports[0][0], rule.dst_ports[0][0], rule.protocol,
                    _abi.DIRECTIONS[direction], self.policy_set, 0)
                if key in seen:
                    continue      # the same 5-tuple again: the first rule listed wins
                seen.add(key)
                out.append((key, value))

    def _outranked(self, rule, direction):
        """Does a non-exact rule of a higher tier match rule's one packet?"""
        higher = self.higher_tiers.get(rule.tier_rank)
        if higher is None:
            higher = [r for r in self.policy.rules
                      if r.tier_rank > rule.tier_rank and not r.exact]
            self.higher_tiers[rule.tier_rank] = higher
        if not higher:
            return False        # the top tier, or a policy without tiers
        point = (rule.src_prefixes[0][0], rule.dst_prefixes[0][0], rule.protocol,
                 rule.src_ports[0][0], rule.dst_ports[0][0])
        return any(_verdict_rank(other, direction, *point) is not None for other in higher)

    # -- stage 1: remote prefix -------------------------------------------------------------
    def remote_stage(self, direction):
        rules = [r for r in self.policy.rules if direction in r.directions and not r.exact]
        if not rules:
            return
        listing = {}
        for rule in rules:
            for prefix in rule.remote(direction) or [ANY_PREFIX]:
                listing.setdefault(prefix, []).append(rule)
        values = {}
        for node, found in _by_longest_holder(listing).items():
            cands = [_Cand(rule, remote_len=length) for rule, length in found]
            values[node] = self.after_remote(direction, cands)
        root = _abi.ms_lpm_root_class(self.policy_set, _abi.DIRECTIONS[direction])
        self.out.add("ip_range_map", _lpm_entries(values, lambda node: _maps.LpmKey(
            prefixlen=_abi.MS_LPM_CLASS_BITS + node[1], class_id=root, ip=_u32(node[0]))))

    # -- stage 2: the container's prefix ---------------------------------------------------
    def after_remote(self, direction, cands):
        live, winner = _prune(
            cands, lambda c: c.rule.local(direction) is None and c.rule.protocol is None,
            lambda c: (c.rule.tier_rank, c.remote_len))
        if winner is not None:
            return _final(winner)
        # The container is src for egress and dst for ingress: never share across.
        cid, new = self.class_id(("local", direction, _signature(live, ("remote_len",))))
        if new:
            listing = {}
            for cand in live:
                for prefix in cand.rule.local(direction) or [ANY_PREFIX]:
                    listing.setdefault(prefix, []).append(cand)
            values = {}
            for node, found in _by_longest_holder(listing).items():
                sub = [_Cand(c.rule, c.remote_len, local_len=length) for c, length in found]
                values[node] = self.after_local(sub)
            self.out.add("local_range_map", _lpm_entries(values, lambda node: _maps.LpmKey(
                prefixlen=_abi.MS_LPM_CLASS_BITS + node[1], class_id=cid, ip=_u32(node[0]))))
        return _next(cid)

    # -- stage 3: protocol and destination port ---------------------------------------------
    def after_local(self, cands):
        live, winner = _prune(cands, lambda c: c.rule.protocol is None,
                              lambda c: (c.rule.tier_rank, c.remote_len, c.local_len))
        if winner is not None:
            return _final(winner)
        cid, new = self.class_id(("port", _signature(live, ("remote_len", "local_len"))))
        if new:
            self.port_entries(cid, live)
        return _next(cid)

    def port_entries(self, cid, live):
        any_proto = [c for c in live if c.rule.protocol is None]
        fallback = _final(_best(any_proto)) if any_proto else None
        if fallback is not None:
            self.out.add("port_range_map", [(_maps.PortLpmKey(prefixlen=_abi.MS_LPM_CLASS_BITS, class_id=cid),
                                             fallback)])
        for proto in sorted(set(c.rule.protocol for c in live if c.rule.protocol is not None)):
            mine = [c for c in live if c.rule.protocol in (proto, None)]
            if proto not in PORT_PROTOCOLS:
                value = _final(_best(mine))
                if not _same(value, fallback):
                    key = _maps.PortLpmKey(prefixlen=PORT_KEY_PROTOCOL_LEN, class_id=cid,
                                           protocol=proto)
                    self.out.add("port_range_map", [(key, value)])
                continue
            cuts = [r for c in mine for r in (c.rule.dst_ports or ())]

            def outcome(port, mine=mine):
                sub = []
                for c in mine:
                    spec = port_specificity(c.rule.dst_ports, port)
                    if spec is not None:
                        sub.append(_Cand(c.rule, c.remote_len, c.local_len, dspec=spec))
                return self.after_dport(sub) if sub else None

            for low, high, value in _runs(_intervals(cuts), outcome):
                # No candidate (then no any-protocol rule either): the miss is the default.
                # The same answer as the any-protocol entry: the fallback gives it.
                if value is None or _same(value, fallback):
                    continue
                for start, bits in _blocks(low, high):
                    key = _maps.PortLpmKey(prefixlen=PORT_KEY_PROTOCOL_LEN + bits, class_id=cid,
                                           protocol=proto)
                    key.port[0], key.port[1] = _maps.port_to_bytes(start)
                    self.out.add("port_range_map", [(key, value)])
        return cid

    # -- stage 4: source port ----------------------------------------------------------------
    def after_dport(self, cands):
        live, winner = _prune(cands, lambda c: c.rule.src_ports is None,
                              lambda c: (c.rule.tier_rank, c.remote_len, c.local_len, c.dspec))
        if winner is not None:
            return _final(winner)
        cid, new = self.class_id(("sport", _signature(live, ("remote_len", "local_len",
                                                             "dspec"))))
        if new:
            cuts = [r for c in live for r in (c.rule.src_ports or ())]

            def outcome(port):
                win = _best([c for c in live
                             if port_specificity(c.rule.src_ports, port) is not None],
                            lambda c: port_specificity(c.rule.src_ports, port))
                return None if win is None else _final(win)

            for low, high, value in _runs(_intervals(cuts), outcome):
                if value is None:
                    continue    # nothing matches: the miss means the default
                for start, bits in _blocks(low, high):
                    key = _maps.SportLpmKey(prefixlen=_abi.MS_LPM_CLASS_BITS + bits, class_id=cid)
                    key.port[0], key.port[1] = _maps.port_to_bytes(start)
                    self.out.add("sport_range_map", [(key, value)])
        return _next(cid)


def compile_policy(policy, policy_set):
    """CompiledPolicy for one policy set (0 or 1) of the double-buffered policy maps."""
    if policy_set not in (0, 1):
        raise ValueError("policy_set must be 0 or 1, not %r" % (policy_set,))
    compiler = _Compiler(policy, policy_set)
    compiler.out.rule_ids = dict((rule.name, rule.policy_id) for rule in policy.rules)
    compiler.exact()
    for direction in ("egress", "ingress"):
        compiler.remote_stage(direction)
    return compiler.out

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The session map read in bulk: summaries for facts, recount and expiry for the monitor.

A million sessions must be read in about a second, so the scan works on the raw batch
buffers with struct.iter_unpack (one C-level pass per batch) instead of building a ctypes
object per entry. The field offsets come from the ctypes mirrors in _maps, which
test_layout checks against the C header: the layout still has one source of truth.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import collections
import ctypes
import struct

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps

NS_PER_SEC = 1000000000
TCP = 6
UDP = 17
ICMP = 1
_TCP_CLOSED = (_abi.TCP_STATE["TIME_WAIT"], _abi.TCP_STATE["CLOSE"])
_TCP_CLOSING = tuple(_abi.TCP_STATE[name] for name in
                     ("FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"))
_TCP_OPENING = (_abi.TCP_STATE["SYN_SENT"], _abi.TCP_STATE["SYN_RECV"])
SYN_SENT = _abi.TCP_STATE["SYN_SENT"]

# Idle seconds after which the monitor deletes a session, by class. Close to the
# kernel's conntrack defaults, except established TCP (conntrack keeps it 5 days; a
# micro-segmentation table should not hold dead peers that long).
DEFAULT_TIMEOUTS = {
    "tcp_syn": 30,           # SYN_SENT / SYN_RECV: half-open, also what a SYN flood leaves
    "tcp_established": 3600,
    "tcp_closing": 60,       # FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING
    "tcp_closed": 10,        # TIME_WAIT and CLOSE
    "udp": 60,
    "icmp": 30,
    "other": 60,
}

_CODES = {ctypes.c_uint8: "B", ctypes.c_uint16: "H", ctypes.c_uint32: "I",
          ctypes.c_uint64: "Q"}


def field_picker(struct_type, names):
    """A struct.Struct that unpacks only `names` (in that order of offset) from one record."""
    fields = dict((name, getattr(struct_type, name)) for name in names)
    types = dict(struct_type._fields_)  # pylint: disable=protected-access
    ordered = sorted(names, key=lambda n: fields[n].offset)
    fmt = "="
    position = 0
    for name in ordered:
        offset = fields[name].offset
        if offset > position:
            fmt += "%dx" % (offset - position)
        fmt += _CODES[types[name]]
        position = offset + fields[name].size
    size = ctypes.sizeof(struct_type)
    if size > position:
        fmt += "%dx" % (size - position)
    return struct.Struct(fmt), ordered


_KEY_STRUCT, _KEY_ORDER = field_picker(_maps.SessionKey, ("protocol",))
_VALUE_STRUCT, _VALUE_ORDER = field_picker(_maps.SessionValue,
                                           ("last_seen", "action", "state", "ifindex"))
_SUMMARY_STRUCT, _SUMMARY_ORDER = field_picker(_maps.SessionValue, ("action", "state"))
if _VALUE_ORDER != ["last_seen", "action", "state", "ifindex"] or \
        _SUMMARY_ORDER != ["action", "state"]:
    raise ImportError("session_value fields moved: the scans below unpack them by position")
KEY_SIZE = ctypes.sizeof(_maps.SessionKey)
VALUE_SIZE = ctypes.sizeof(_maps.SessionValue)


def timeouts_ns(timeouts):
    merged = dict(DEFAULT_TIMEOUTS)
    merged.update(timeouts or {})
    return dict((name, int(seconds * NS_PER_SEC)) for name, seconds in merged.items())


def timeout_class(protocol, state):
    """The DEFAULT_TIMEOUTS key that governs a session."""
    if protocol == TCP:
        if state in _TCP_CLOSED:
            return "tcp_closed"
        if state in _TCP_CLOSING:
            return "tcp_closing"
        if state in _TCP_OPENING:
            return "tcp_syn"
        return "tcp_established"
    if protocol == UDP:
        return "udp"
    if protocol == ICMP:
        return "icmp"
    return "other"


def _chunks(pinned):
    return pinned.raw_batches("session_map")


def summarize(pinned):
    """Counts by protocol, TCP state and action from one pass over the map."""
    # Counter over zip of iter_unpack: the per-session loop runs in C, and only the few
    # distinct (protocol, action, state) combinations reach Python.
    tally = collections.Counter()
    for keys, values, _count in _chunks(pinned):
        tally.update(zip(_KEY_STRUCT.iter_unpack(keys), _SUMMARY_STRUCT.iter_unpack(values)))
    by_protocol, by_state, by_action = {}, {}, {}
    for ((protocol,), (action, state)), n in tally.items():
        name = _abi.PROTOCOL_NAMES.get(protocol, str(protocol))
        by_protocol[name] = by_protocol.get(name, 0) + n
        if protocol == TCP:
            label = _abi.TCP_STATES[state] if state < len(_abi.TCP_STATES) else str(state)
            by_state[label] = by_state.get(label, 0) + n
        label = _abi.ACTION_NAMES.get(action, str(action))
        by_action[label] = by_action.get(label, 0) + n
    return {"by_protocol": by_protocol, "tcp_states": by_state, "by_action": by_action,
            "total": sum(by_protocol.values())}


def matching(pinned, predicate, limit):
    """Up to `limit` (key, value) mirrors for which predicate(key, value) holds, and how
    many matched in all."""
    found = []
    matched = 0
    for keys, values, count in _chunks(pinned):
        for index in range(count):
            key = _maps.SessionKey.unpack(keys[index * KEY_SIZE:(index + 1) * KEY_SIZE])
            value = _maps.SessionValue.unpack(values[index * VALUE_SIZE:(index + 1) * VALUE_SIZE])
            if predicate(key, value):
                matched += 1
                if len(found) < limit:
                    found.append((key, value))
    return found, matched


def sweep(pinned, now_ns, timeouts, delete=True):
    """Count live and SYN_SENT sessions and delete the ones idle past their timeout.

    `timeouts` is the output of timeouts_ns(). Returns {"total", "syn_sent", "expired",
    "expired_by_class", "by_endpoint"}; by_endpoint is {ifindex: [sessions, syn_sent]} of
    the endpoint (host-side interface) whose hook created each session, counted like total
    and syn_sent.
    """
    total = 0
    syn_sent = 0
    doomed = []
    by_class = {}
    limits = {}
    by_endpoint = collections.defaultdict(lambda: [0, 0])
    for keys, values, count in _chunks(pinned):
        total += count
        protocols = [k[0] for k in _KEY_STRUCT.iter_unpack(keys)]
        for index, (last_seen, _action, state, ifindex) in \
                enumerate(_VALUE_STRUCT.iter_unpack(values)):
            protocol = protocols[index]
            slot = (protocol, state if protocol == TCP else 0)
            klass = limits.get(slot)
            if klass is None:
                klass = timeout_class(protocol, state)
                limits[slot] = klass
            usage = by_endpoint[ifindex]
            if now_ns - last_seen > timeouts[klass]:
                doomed.append(keys[index * KEY_SIZE:(index + 1) * KEY_SIZE])
                by_class[klass] = by_class.get(klass, 0) + 1
                if not delete:
                    usage[0] += 1    # still there, like `total`; not half-open any more
            else:
                usage[0] += 1
                if protocol == TCP and state == SYN_SENT:
                    syn_sent += 1
                    usage[1] += 1
    deleted = 0
    if doomed and delete:
        deleted = pinned.delete_many("session_map", doomed)
    return {"total": total - (deleted if delete else 0), "syn_sent": syn_sent,
            "expired": deleted if delete else len(doomed), "expired_by_class": by_class,
            "by_endpoint": dict(by_endpoint)}


def rewrite_endpoint_usage(pinned, by_endpoint, live_ifindexes=None):
    """Write the recount into endpoint_usage_map, so the per-endpoint quotas act on real
    numbers (LRU evictions and expiry are invisible to the data plane).

    Only sessions and half_open are rewritten; the drop counters keep counting. An entry
    of an interface that is gone (not in live_ifindexes) and holds no session is deleted.
    Returns {ifindex: EndpointUsage} as written.
    """
    current = dict((key.value, value) for key, value in pinned.items("endpoint_usage_map"))
    written = {}
    for ifindex in set(current) | set(by_endpoint):
        sessions, half_open = by_endpoint.get(ifindex, (0, 0))
        usage = current.get(ifindex) or _maps.EndpointUsage()
        if not sessions and live_ifindexes is not None and ifindex not in live_ifindexes:
            if ifindex in current:
                pinned.delete("endpoint_usage_map", _maps.U32(ifindex))
            continue
        if ifindex in current and (usage.sessions, usage.half_open) == (sessions, half_open):
            written[ifindex] = usage
            continue
        usage.sessions, usage.half_open = sessions, half_open
        try:
            pinned.update("endpoint_usage_map", _maps.U32(ifindex), usage)
        except OSError:
            continue     # the map is full: that endpoint goes without its quota, as in C
        written[ifindex] = usage
    return written

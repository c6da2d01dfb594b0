# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reference verdict model: DESIGN.md section 3, read literally.

Scan every rule, keep the candidates, pick the most specific, break ties deny > log >
allow, else the default. No cleverness: this is the oracle the compiled kernel lookups are
tested against.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import socket
import struct

from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    ACTION_RANK, PORT_PROTOCOLS, port_specificity)


def ip_int(address):
    return struct.unpack("!I", socket.inet_aton(address))[0]


def prefix_match(nets, address):
    """Prefix length of the CIDR in nets holding address (0 for any), or None."""
    if nets is None:
        return 0
    best = None
    for network, plen in nets:
        mask = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
        if address & mask == network:
            best = plen if best is None else max(best, plen)
    return best


def specificity(rule, direction, src, dst, protocol, src_port, dst_port):
    """The rule's rank for this packet (bigger wins), or None if it is not a candidate."""
    if direction not in rule.directions:
        return None
    src_len = prefix_match(rule.src, src)
    dst_len = prefix_match(rule.dst, dst)
    if src_len is None or dst_len is None:
        return None
    if rule.protocol is not None and rule.protocol != protocol:
        return None
    if protocol in PORT_PROTOCOLS:
        dspec = port_specificity(rule.dst_ports, dst_port)
        sspec = port_specificity(rule.src_ports, src_port)
    else:
        # Packets without ports only meet rules without ports.
        dspec = 0 if rule.dst_ports is None else None
        sspec = 0 if rule.src_ports is None else None
    if dspec is None or sspec is None:
        return None
    remote_len, local_len = (dst_len, src_len) if direction == "egress" else (src_len, dst_len)
    return (
        1 if rule.exact else 0,
        remote_len,
        local_len,
        dspec,
        sspec,
        0 if rule.protocol is None else 1,
        ACTION_RANK[rule.action],
    )


def verdict(policy, direction, src, dst, protocol, src_port=0, dst_port=0):
    """(action, policy_id) for the first packet of a flow; policy_id 0 is the default.

    src and dst are the packet's addresses as dotted quads (src is the container for
    egress, the remote peer for ingress).
    """
    src_i, dst_i = ip_int(src), ip_int(dst)
    if protocol not in PORT_PROTOCOLS:
        src_port = dst_port = 0
    best = None
    best_rule = None
    for rule in policy.rules:
        rank = specificity(rule, direction, src_i, dst_i, protocol, src_port, dst_port)
        if rank is not None and (best is None or rank > best):
            best, best_rule = rank, rule
    if best_rule is None:
        return policy.default_action[direction], 0
    return best_rule.action, best_rule.policy_id

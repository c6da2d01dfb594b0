# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""The reference verdict model: docs/architecture.md section 3, read literally.

Scan every rule, keep the candidates, pick the most specific, break ties deny > log >
allow, else the default action of the direction. Nothing clever: this is the oracle the
compiled kernel lookups are tested against, and the explanation users get.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import socket
import struct

from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    ACTION_RANK, PORT_PROTOCOLS, PROTOCOLS, port_specificity)


def ip_int(address):
    """A dotted quad (or an int already) as a host-order int."""
    if isinstance(address, int):
        return address
    return struct.unpack("!I", socket.inet_aton(address))[0]


def prefix_match(prefixes, address):
    """Prefix length of the longest CIDR of prefixes holding address; 0 for any; None if none."""
    if prefixes is None:
        return 0
    best = None
    for network, plen in prefixes:
        mask = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
        if address & mask == network and (best is None or plen > best):
            best = plen
    return best


def rank(rule, direction, src, dst, protocol, src_port, dst_port):
    """How specific rule is for this packet (bigger wins), or None if it does not match.

    src and dst are ints; protocol an int; ports already 0 for portless protocols.
    The tuple is compared left to right, exactly in the order of docs/architecture.md section 3:
    the rule's tier (the highest tier with a matching rule decides), then within it the
    exact 5-tuple, remote prefix, local prefix, destination port, source port, protocol,
    then the action for the tie (deny > log > allow).
    """
    if direction not in rule.directions:
        return None
    if rule.protocol is not None and rule.protocol != protocol:
        return None
    src_len = prefix_match(rule.src_prefixes, src)
    dst_len = prefix_match(rule.dst_prefixes, dst)
    if src_len is None or dst_len is None:
        return None
    if protocol in PORT_PROTOCOLS:
        dst_spec = port_specificity(rule.dst_ports, dst_port)
        src_spec = port_specificity(rule.src_ports, src_port)
    else:
        # A packet without ports only meets rules without ports.
        dst_spec = 0 if rule.dst_ports is None else None
        src_spec = 0 if rule.src_ports is None else None
    if dst_spec is None or src_spec is None:
        return None
    if direction == "egress":
        remote_len, local_len = dst_len, src_len
    else:
        remote_len, local_len = src_len, dst_len
    return (
        rule.tier_rank,
        1 if rule.exact else 0,
        remote_len,
        local_len,
        dst_spec,
        src_spec,
        0 if rule.protocol is None else 1,
        ACTION_RANK[rule.action],
    )


def candidates(policy, direction, src_ip, dst_ip, protocol, src_port=0, dst_port=0):
    """[(rank, rule)] of every matching rule, best first (ties keep the rules' order)."""
    protocol = PROTOCOLS.get(protocol, protocol) if isinstance(protocol, str) else protocol
    src, dst = ip_int(src_ip), ip_int(dst_ip)
    if protocol not in PORT_PROTOCOLS:
        src_port = dst_port = 0
    found = []
    for rule in policy.rules:
        r = rank(rule, direction, src, dst, protocol, src_port, dst_port)
        if r is not None:
            found.append((r, rule))
    found.sort(key=lambda item: item[0], reverse=True)   # stable: equal ranks keep order
    return found


def verdict(policy, direction, src_ip, dst_ip, protocol, src_port=0, dst_port=0):
    """(action, policy_id) for the first packet of a flow; policy_id 0 means the default.

    direction is "egress" (the container sends: src is the container) or "ingress" (the
    container receives: src is the remote peer). Addresses are dotted quads; protocol is
    the IANA number. When equally specific rules agree on the action the first one listed
    is reported.
    """
    found = candidates(policy, direction, src_ip, dst_ip, protocol, src_port, dst_port)
    if not found:
        return policy.default_action[direction], 0
    best = found[0][1]
    return best.action, best.policy_id


PASSTHROUGH_MODES = ("default_only", "always", "never")
ICMP = 1
UDP = 17
DNS_PORT = 53


def degraded_passes(policy, direction, src_ip, dst_ip, protocol, src_port=0, dst_port=0,
                    passthrough="default_only", reply_shaped=None):
    """(passes, action, policy_id) for a packet that meets no session while new flows are
    degraded (critical map pressure, or its endpoint over its session quota).

    The seed's degradation: allowed flows pass untracked, DNS and ICMP pass, the rest is
    dropped. docs/architecture.md section 2 narrows the passthrough: with `default_only` (the default)
    only a packet the default action denied passes as DNS/ICMP; a deny rule always holds.
    Untracked flows have no sessions for their replies, so a denied packet that can be a
    reply (reply_shaped: a TCP segment with ACK, UDP, an ICMP echo reply; by default, UDP)
    passes when its reversed 5-tuple is allowed as a new flow from the other side.
    policy_id is always the packet's own verdict's.
    """
    if passthrough not in PASSTHROUGH_MODES:
        raise ValueError("passthrough: %r is not one of %s" % (passthrough, PASSTHROUGH_MODES))
    action, policy_id = verdict(policy, direction, src_ip, dst_ip, protocol, src_port, dst_port)
    protocol = PROTOCOLS.get(protocol, protocol) if isinstance(protocol, str) else protocol
    if action != "deny":
        return True, action, policy_id
    dns_or_icmp = protocol == ICMP or (protocol in PORT_PROTOCOLS and dst_port == DNS_PORT)
    if dns_or_icmp and (passthrough == "always" or
                        (passthrough == "default_only" and policy_id == 0)):
        return True, action, policy_id
    if reply_shaped is None:
        reply_shaped = protocol == UDP
    if reply_shaped:
        other = "ingress" if direction == "egress" else "egress"
        reverse, _reverse_id = verdict(policy, other, dst_ip, src_ip, protocol, dst_port,
                                       src_port)
        if reverse != "deny":
            return True, action, policy_id
    return False, action, policy_id

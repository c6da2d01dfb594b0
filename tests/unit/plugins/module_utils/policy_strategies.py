# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hypothesis strategies for rule sets and packets that collide on purpose.

Addresses, prefixes and ports come from small pools inside 198.18.0.0/15 so that rules
overlap, nest and tie, and packets land on their boundaries.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from hypothesis import strategies as st

CIDRS = ["198.18.0.0/15", "198.18.0.0/16", "198.18.1.0/24", "198.18.1.0/25",
         "198.18.1.128/25", "198.18.1.10/32", "198.18.1.200/32", "198.18.2.0/24",
         "198.18.2.20/32", "198.19.0.0/16", "198.19.7.0/24", "198.19.7.7/32"]
HOSTS = ["198.18.1.10", "198.18.1.200", "198.18.1.77", "198.18.2.20", "198.18.2.5",
         "198.19.7.7", "198.19.7.9", "198.19.200.1", "198.18.9.9"]
PORTS = [0, 22, 53, 80, 443, 1024, 5432, 5433, 8000, 8080, 65535]
PORT_ITEMS = [22, 53, 80, 443, 5432, 5433, "80-443", "5000-6000", "1024-65535", "0-1023",
              "8000-8080", "5432-5432"]
SEGMENTS = {"web": ["198.18.1.0/25", "198.18.1.200/32"], "db": ["198.18.2.20/32"],
            "lab": ["198.18.0.0/16"], "far": ["198.19.7.0/24", "198.19.0.0/16"]}


@st.composite
def address_set(draw):
    if draw(st.booleans()):
        return None
    items = draw(st.lists(st.sampled_from(CIDRS + sorted(SEGMENTS)), min_size=1, max_size=2))
    return items


@st.composite
def rule(draw, index):
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any", "tcp", "udp"]))
    out = {"name": "r%d" % index,
           "direction": draw(st.sampled_from(["egress", "ingress", "both"])),
           "protocol": proto,
           "action": draw(st.sampled_from(["allow", "deny", "log"]))}
    exact = proto in ("tcp", "udp") and draw(st.integers(0, 5)) == 0
    if exact:
        out["src"] = [draw(st.sampled_from(HOSTS)) + "/32"]
        out["dst"] = [draw(st.sampled_from(HOSTS)) + "/32"]
        out["src_ports"] = [draw(st.sampled_from(PORTS))]
        out["dst_ports"] = [draw(st.sampled_from(PORTS))]
        return out
    src, dst = draw(address_set()), draw(address_set())
    if src is not None:
        out["src"] = src
    if dst is not None:
        out["dst"] = dst
    if proto in ("tcp", "udp"):
        if draw(st.booleans()):
            out["dst_ports"] = draw(st.lists(st.sampled_from(PORT_ITEMS), min_size=1,
                                             max_size=2, unique=True))
        if draw(st.integers(0, 3)) == 0:
            out["src_ports"] = draw(st.lists(st.sampled_from(PORT_ITEMS), min_size=1,
                                             max_size=2, unique=True))
    return out


@st.composite
def policy(draw, max_rules=10):
    # Small policies half the time: sharp interactions between two or three rules are
    # where compilers go wrong, and big random sets rarely line them up.
    count = draw(st.one_of(st.integers(1, 3), st.integers(1, max_rules)))
    rules = [draw(rule(i)) for i in range(count)]
    defaults = {"egress": draw(st.sampled_from(["allow", "deny"])),
                "ingress": draw(st.sampled_from(["allow", "deny"]))}
    return {"rules": rules, "segments": SEGMENTS, "default_action": defaults}


@st.composite
def packet(draw):
    direction = draw(st.sampled_from(["egress", "ingress"]))
    container = draw(st.sampled_from(HOSTS))
    remote = draw(st.sampled_from(HOSTS))
    src, dst = (container, remote) if direction == "egress" else (remote, container)
    proto = draw(st.sampled_from([6, 17, 1, 6, 17, 47]))
    return {"direction": direction, "src": src, "dst": dst, "protocol": proto,
            "src_port": draw(st.sampled_from(PORTS + [40000])),
            "dst_port": draw(st.sampled_from(PORTS + [444, 5999, 6000, 6001]))}


def _hosts_in(cidr):
    """The first, last and a middle address of a CIDR (dotted quads)."""
    base, plen = cidr.split("/")
    parts = [int(x) for x in base.split(".")]
    start = (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
    size = 1 << (32 - int(plen))
    picks = set([start, start + size - 1, start + size // 2])
    return ["%d.%d.%d.%d" % (a >> 24 & 255, a >> 16 & 255, a >> 8 & 255, a & 255)
            for a in sorted(picks)]


def _address_in(draw, items):
    if items is None:
        return draw(st.sampled_from(HOSTS))
    item = draw(st.sampled_from(items))
    cidrs = SEGMENTS.get(item, [item])
    return draw(st.sampled_from(_hosts_in(draw(st.sampled_from(cidrs)))))


def _port_in(draw, items):
    if not items:
        return draw(st.sampled_from(PORTS))
    item = str(draw(st.sampled_from(items)))
    low, _sep, high = item.partition("-")
    low, high = int(low), int(high or low)
    return draw(st.sampled_from(sorted(set([low, high, max(low - 1, 0), min(high + 1, 65535)]))))


@st.composite
def packet_for(draw, doc):
    """Half the time a packet aimed at one rule: inside its addresses, on its port edges."""
    if not doc["rules"] or draw(st.booleans()):
        return draw(packet())
    rule = draw(st.sampled_from(doc["rules"]))
    direction = rule["direction"]
    if direction == "both":
        direction = draw(st.sampled_from(["egress", "ingress"]))
    proto = {"tcp": 6, "udp": 17, "icmp": 1}.get(rule["protocol"])
    if proto is None:
        proto = draw(st.sampled_from([6, 17, 1, 47]))
    return {"direction": direction,
            "src": _address_in(draw, rule.get("src")),
            "dst": _address_in(draw, rule.get("dst")),
            "protocol": proto,
            "src_port": _port_in(draw, rule.get("src_ports")),
            "dst_port": _port_in(draw, rule.get("dst_ports"))}


@st.composite
def policy_and_packets(draw, count):
    doc = draw(policy())
    return doc, [draw(packet_for(doc)) for _index in range(count)]

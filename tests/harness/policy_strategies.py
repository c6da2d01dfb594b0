# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hypothesis strategies for policies and the packets aimed at their boundaries.

Small pools so that rules overlap, nest and tie. Shared by the compiler's unit test
(tests/unit/plugins/module_utils/test_compiler.py) and the real-kernel differential test
(tests/functional/test_differential.py).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from hypothesis import strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    PolicyError, normalize, parse_cidr, int_to_ip)

CIDRS = ["198.0.0.0/8", "198.16.0.0/12", "198.18.0.0/15", "198.18.0.0/16", "198.18.0.0/20",
         "198.18.1.0/24", "198.18.1.0/25", "198.18.1.128/25", "198.18.1.192/26",
         "198.18.1.10/32", "198.18.1.128/32", "198.18.1.200/32", "198.18.2.0/24",
         "198.18.2.20/32", "198.18.2.21/32", "198.18.3.0/24", "198.18.128.0/17"]
SEGMENTS = {"web": ["198.18.1.0/25", "198.18.1.200/32"],
            "db": ["198.18.2.20/32", "198.18.2.21/32"],        # merges into a /31
            "dmz": ["198.18.1.128/25", "198.18.3.0/24"],
            "lab": ["198.18.0.0/16"],
            "wide": ["198.0.0.0/8"]}
HOSTS = ["198.18.1.10", "198.18.1.11", "198.18.1.127", "198.18.1.128", "198.18.1.200",
         "198.18.1.255", "198.18.2.20", "198.18.2.21", "198.18.2.22", "198.18.3.7",
         "198.18.200.1", "198.19.0.1", "198.20.0.1", "10.9.8.7"]
SINGLE_PORTS = [0, 22, 53, 80, 443, 5432, 5433, 8080, 65535]
PORT_RANGES = ["0-1023", "80-443", "443-443", "1024-65535", "5000-6000", "8000-8080",
               "5432-5433", "0-65535"]
PORT_ITEMS = SINGLE_PORTS + PORT_RANGES
PROTOCOLS = ["tcp", "udp", "icmp", "any", 47, "tcp", "udp", "tcp"]
PACKET_PROTOCOLS = [6, 17, 1, 47, 132]
TIERS = ["incident", "platform", "app"]


@st.composite
def address_items(draw):
    if draw(st.integers(0, 2)) == 0:
        return None
    return draw(st.lists(st.sampled_from(CIDRS + sorted(SEGMENTS)), min_size=1, max_size=2,
                         unique=True))


@st.composite
def port_items(draw, max_size=3):
    return draw(st.lists(st.sampled_from(PORT_ITEMS), min_size=1, max_size=max_size,
                         unique=True))


@st.composite
def rules(draw, index, earlier):
    """A fresh rule, or (a quarter of the time) a variant of an earlier one: equally
    specific for many packets with another action, so the tie-break decides."""
    if earlier and draw(st.integers(0, 3)) == 0:
        out = dict(draw(st.sampled_from(earlier)))
        out["name"] = "r%d" % index
        out["action"] = draw(st.sampled_from(["allow", "deny", "log"]))
        field = draw(st.sampled_from(["src", "dst", "dst_ports", "direction"]))
        if field == "direction":
            out["direction"] = draw(st.sampled_from(["egress", "ingress", "both"]))
        elif field == "dst_ports" and out.get("dst_ports"):
            out["dst_ports"] = list(out["dst_ports"]) + [draw(st.sampled_from(PORT_ITEMS))]
        elif out.get(field):
            out[field] = list(out[field]) + [draw(st.sampled_from(CIDRS))]
        return out
    proto = draw(st.sampled_from(PROTOCOLS))
    out = {"name": "r%d" % index,
           "direction": draw(st.sampled_from(["egress", "ingress", "both"])),
           "protocol": proto,
           "action": draw(st.sampled_from(["allow", "deny", "log"]))}
    if proto in ("tcp", "udp") and draw(st.integers(0, 4)) == 0:
        out["src"] = [draw(st.sampled_from(HOSTS)) + "/32"]
        out["dst"] = [draw(st.sampled_from(HOSTS))]
        out["src_ports"] = [draw(st.sampled_from(SINGLE_PORTS + [40000]))]
        out["dst_ports"] = [draw(st.sampled_from(SINGLE_PORTS))]
        return out
    for field in ("src", "dst"):
        items = draw(address_items())
        if items is not None:
            out[field] = items
    if proto in ("tcp", "udp"):
        if draw(st.booleans()):
            out["dst_ports"] = draw(port_items())
        if draw(st.integers(0, 2)) == 0:
            out["src_ports"] = draw(port_items(2))
    return out


@st.composite
def policy_docs(draw, min_rules=1, max_rules=12):
    count = draw(st.one_of(st.integers(min_rules, min(3, max_rules)),
                           st.integers(min_rules, max_rules)))
    out = []
    for index in range(count):
        out.append(draw(rules(index, out)))
    defaults = {"egress": draw(st.sampled_from(["allow", "deny"])),
                "ingress": draw(st.sampled_from(["allow", "deny"]))}
    doc = {"rules": out, "segments": SEGMENTS, "default_action": defaults}
    # Half the policies are tiered: each rule in a drawn tier, or none (the last tier).
    tier_count = draw(st.sampled_from([0, 0, 2, 3]))
    if tier_count:
        doc["tiers"] = TIERS[:tier_count]
        for rule in out:
            tier = draw(st.sampled_from(doc["tiers"] + [None]))
            if tier is not None:
                rule["tier"] = tier
    return doc


def build_policy(doc):
    """normalize(), dropping rules that conflict with an earlier one (a valid refusal)."""
    rules_ = list(doc["rules"])
    while True:
        try:
            return normalize(rules_, doc["segments"], doc["default_action"],
                             tiers=doc.get("tiers"))
        except PolicyError as exc:
            if exc.field != "action" or "conflicts" not in str(exc):
                raise
            rules_ = [r for r in rules_ if r["name"] != exc.rule]


def cidr_edges(cidr):
    network, plen = parse_cidr(cidr)
    size = 1 << (32 - plen)
    inside = [network, network + size - 1, network + size // 2]
    outside = [network - 1, network + size]
    return [int_to_ip(a & 0xffffffff) for a in inside * 2 + outside]


def _address_near(draw, items):
    if items is None or draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(HOSTS))
    item = draw(st.sampled_from(items))
    cidr = draw(st.sampled_from(SEGMENTS.get(item, [item])))
    if "/" not in cidr:
        cidr += "/32"
    return draw(st.sampled_from(cidr_edges(cidr)))


def _port_near(draw, items):
    if not items or draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(SINGLE_PORTS + [1, 1023, 1024, 40000, 6001]))
    low, _sep, high = str(draw(st.sampled_from(items))).partition("-")
    low, high = int(low), int(high or low)
    inside = [low, high, (low + high) // 2]
    return draw(st.sampled_from(inside * 2 + [max(low - 1, 0), min(high + 1, 65535)]))


@st.composite
def packets(draw, doc=None):
    """A packet dict, mostly aimed at one rule of doc: its edges and just outside them."""
    if not doc or not doc["rules"] or draw(st.integers(0, 3)) == 0:
        direction = draw(st.sampled_from(["egress", "ingress"]))
        return {"direction": direction, "src": draw(st.sampled_from(HOSTS)),
                "dst": draw(st.sampled_from(HOSTS)),
                "protocol": draw(st.sampled_from(PACKET_PROTOCOLS)),
                "src_port": draw(st.sampled_from(SINGLE_PORTS + [40000])),
                "dst_port": draw(st.sampled_from(SINGLE_PORTS + [444, 5999, 6000, 6001]))}
    rule = draw(st.sampled_from(doc["rules"]))
    direction = rule.get("direction", "both")
    if direction == "both":
        direction = draw(st.sampled_from(["egress", "ingress"]))
    proto = _abi.PROTOCOLS.get(rule.get("protocol"), rule.get("protocol"))
    if proto in (None, "any") or draw(st.integers(0, 7)) == 0:
        proto = draw(st.sampled_from(PACKET_PROTOCOLS))
    return {"direction": direction,
            "src": _address_near(draw, rule.get("src")),
            "dst": _address_near(draw, rule.get("dst")),
            "protocol": proto,
            "src_port": _port_near(draw, rule.get("src_ports")),
            "dst_port": _port_near(draw, rule.get("dst_ports"))}


@st.composite
def policy_and_packets(draw, count=12, max_rules=12, min_rules=1):
    doc = draw(policy_docs(min_rules, max_rules))
    return doc, [draw(packets(doc)) for _index in range(count)]

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy users write: validation and the canonical form compiler and model share.

Every error names the rule and the field, so a bad playbook says where it is wrong before
anything on the host is touched.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import re
import zlib

try:
    import netaddr
    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the host
    netaddr = None
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = exc

RULE_KEYS = ("name", "direction", "src", "dst", "protocol", "dst_ports", "src_ports", "action")
DIRECTIONS = {"egress": ("egress",), "ingress": ("ingress",), "both": ("egress", "ingress")}
ACTIONS = ("allow", "deny", "log")
ACTION_RANK = {"allow": 0, "log": 1, "deny": 2}   # a tie goes deny > log > allow
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "any": None}
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
PORT_PROTOCOLS = (6, 17)


class PolicyError(Exception):
    def __init__(self, rule, field, message):
        self.rule = rule
        self.field = field
        where = "rule %r: %s" % (rule, field) if rule is not None else field
        super(PolicyError, self).__init__("%s: %s" % (where, message))


class Rule:
    """One canonical rule. Addresses are (network_int, prefixlen) pairs, ports (lo, hi)."""

    __slots__ = ("name", "policy_id", "directions", "src", "dst", "protocol", "dst_ports",
                 "src_ports", "action", "source")

    def __init__(self, **fields):
        for key in self.__slots__:
            setattr(self, key, fields.get(key))

    @property
    def exact(self):
        """All five fields single-valued: the seed's policy_map rule."""
        def single_host(nets):
            return nets is not None and len(nets) == 1 and nets[0][1] == 32

        def single_port(ports):
            return ports is not None and len(ports) == 1 and ports[0][0] == ports[0][1]
        return (self.protocol in PORT_PROTOCOLS and single_host(self.src) and
                single_host(self.dst) and single_port(self.src_ports) and
                single_port(self.dst_ports))


class Policy:
    def __init__(self, rules, segments, default_action):
        self.rules = rules
        self.segments = segments
        self.default_action = default_action

    def to_rules(self):
        return [rule.source for rule in self.rules]


def policy_id_for(name):
    """Stable id from the name: the same rule keeps its hit counters across converges."""
    value = zlib.crc32(name.encode("utf-8")) & 0x7fffffff
    return value or 1


_DOTTED = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?$")


def _parse_simple(text):
    """(network_int, prefixlen) for a plain dotted quad or CIDR, else None (slow path).

    Large policies are mostly single hosts; parsing them without netaddr objects is what
    keeps a 100,000-rule normalize in seconds.
    """
    match = _DOTTED.match(text)
    if not match:
        return None
    octets = [int(g) for g in match.groups()[:4]]
    plen = int(match.group(5)) if match.group(5) is not None else 32
    if max(octets) > 255 or plen > 32:
        return None
    value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    mask = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
    if value & mask != value:
        return None   # host bits set: the slow path says so properly
    return value, plen


def _parse_cidr(text, rule, field):
    if netaddr is None:
        raise PolicyError(rule, field, "netaddr is required to parse addresses")
    try:
        net = netaddr.IPNetwork(str(text))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise PolicyError(rule, field, "%r is not an IPv4 address, CIDR or segment" % (text,))
    if net.version != 4:
        raise PolicyError(rule, field, "%s is IPv6; rules are IPv4 only for now" % text)
    if net.network != net.ip:
        raise PolicyError(rule, field, "%s has host bits set; did you mean %s?" % (text, net.cidr))
    return net.cidr


def _looks_like_address(text):
    return bool(re.match(r"^[0-9a-fA-F:.]+(/\d+)?$", str(text)))


def parse_segments(segments):
    out = {}
    for name, cidrs in (segments or {}).items():
        if isinstance(cidrs, str):
            cidrs = [cidrs]
        if not isinstance(cidrs, (list, tuple)) or not cidrs:
            raise PolicyError(None, "segments.%s" % name, "must be a non-empty list of CIDRs")
        nets = [_parse_cidr(c, None, "segments.%s" % name) for c in cidrs]
        out[name] = netaddr.cidr_merge(nets)
    return out


def _addresses(value, segments, rule, field):
    """None (any) or a merged list of (network_int, prefixlen)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise PolicyError(rule, field, "must be a CIDR, a segment name or a list of them")
    if len(items) == 1 and str(items[0]) not in segments:
        simple = _parse_simple(str(items[0]))
        if simple is not None:
            return None if simple[1] == 0 else [simple]
    nets = []
    for item in items:
        item = str(item)
        if item in segments:
            nets.extend(segments[item])
        elif item in ("any", "0.0.0.0/0"):
            return None
        elif _looks_like_address(item):
            nets.append(_parse_cidr(item, rule, field))
        else:
            raise PolicyError(rule, field, "unknown segment %r" % item)
    return sorted((int(n.network), n.prefixlen) for n in netaddr.cidr_merge(nets))


def _ports(value, protocol, rule, field):
    if value is None:
        return None
    if protocol not in PORT_PROTOCOLS:
        raise PolicyError(rule, field, "ports need protocol tcp or udp, not %s"
                          % PROTOCOL_NAMES.get(protocol, protocol if protocol is not None
                                               else "any"))
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise PolicyError(rule, field, "must not be empty (omit it for any port)")
    ranges = []
    for item in items:
        text = str(item).strip()
        match = re.match(r"^(\d+)(?:\s*-\s*(\d+))?$", text)
        if not match or isinstance(item, bool):
            raise PolicyError(rule, field, "%r is not a port or a low-high range" % (item,))
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        for port in (low, high):
            if not 0 <= port <= 65535:
                raise PolicyError(rule, field, "port %d is out of range 0-65535" % port)
        if low > high:
            raise PolicyError(rule, field, "range %s runs backwards" % text)
        ranges.append((low, high))
    return _merge_ranges(ranges)


def _merge_ranges(ranges):
    """Entries stay as written (a port is as specific as the best entry holding it)."""
    return sorted(set(ranges))


def port_specificity(ranges, port):
    """2 single port, 1 range, 0 any, None no match."""
    if ranges is None:
        return 0
    best = None
    for low, high in ranges:
        if low <= port <= high:
            spec = 2 if low == high else 1
            best = spec if best is None else max(best, spec)
    return best


def _protocol(value, rule):
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    raise PolicyError(rule, "protocol", "%r is not tcp, udp, icmp, any or 0-255" % (value,))


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _canonical_source(raw, direction, protocol):
    """The rule as the user wrote it, in one spelling: what diff and gathered show."""
    out = {"name": raw["name"], "direction": direction}
    for key in ("src", "dst"):
        if raw.get(key) is not None:
            out[key] = [str(v) for v in _as_list(raw[key])]
    out["protocol"] = PROTOCOL_NAMES.get(protocol, "any" if protocol is None else protocol)
    for key in ("dst_ports", "src_ports"):
        if raw.get(key) is not None:
            out[key] = [int(p) if str(p).strip().isdigit() else str(p).replace(" ", "")
                        for p in _as_list(raw[key])]
    out["action"] = raw["action"]
    return out


def normalize(rules, segments, default_action):
    """Validate everything and return a Policy, or raise PolicyError naming rule and field."""
    segs = parse_segments(segments)
    defaults = {}
    for direction in ("egress", "ingress"):
        value = (default_action or {}).get(direction, "allow")
        if value not in ("allow", "deny"):
            raise PolicyError(None, "default_action.%s" % direction,
                              "%r is not allow or deny" % (value,))
        defaults[direction] = value
    seen_names = {}
    seen_ids = {}
    seen_match = {}
    out = []
    for index, raw in enumerate(rules or []):
        if not isinstance(raw, dict):
            raise PolicyError("#%d" % (index + 1), "rule", "must be a dict")
        name = raw.get("name")
        if not name or not isinstance(name, str):
            raise PolicyError("#%d" % (index + 1), "name", "is required")
        unknown = sorted(set(raw) - set(RULE_KEYS))
        if unknown:
            raise PolicyError(name, unknown[0], "unknown field (known: %s)" % ", ".join(RULE_KEYS))
        if name in seen_names:
            raise PolicyError(name, "name", "duplicate rule name (rules #%d and #%d)"
                              % (seen_names[name] + 1, index + 1))
        seen_names[name] = index
        direction = raw.get("direction") or "both"
        if direction not in DIRECTIONS:
            raise PolicyError(name, "direction", "%r is not egress, ingress or both" % direction)
        action = raw.get("action")
        if action not in ACTIONS:
            raise PolicyError(name, "action", "%r is not allow, deny or log" % (action,))
        protocol = _protocol(raw.get("protocol"), name)
        rule = Rule(
            name=name, policy_id=policy_id_for(name), directions=DIRECTIONS[direction],
            src=_addresses(raw.get("src"), segs, name, "src"),
            dst=_addresses(raw.get("dst"), segs, name, "dst"),
            protocol=protocol,
            dst_ports=_ports(raw.get("dst_ports"), protocol, name, "dst_ports"),
            src_ports=_ports(raw.get("src_ports"), protocol, name, "src_ports"),
            action=action,
        )
        rule.source = _canonical_source(raw, direction, protocol)
        if rule.policy_id in seen_ids:
            raise PolicyError(name, "name", "its policy id collides with rule %r; rename one"
                              % seen_ids[rule.policy_id])
        seen_ids[rule.policy_id] = name
        for one_direction in rule.directions:
            match = (one_direction, _freeze(rule.src), _freeze(rule.dst), rule.protocol,
                     _freeze(rule.dst_ports), _freeze(rule.src_ports))
            other = seen_match.get(match)
            if other and other[1] != action:
                raise PolicyError(name, "action", "rule %r matches the same traffic (%s) with "
                                  "action %s" % (other[0], one_direction, other[1]))
            seen_match[match] = (name, action)
        out.append(rule)
    return Policy(out, segs, defaults)


def _freeze(value):
    return None if value is None else tuple(value)

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""The policy users write: validation, and the canonical form the compiler and model share.

``normalize(rules, segments, default_action)`` checks everything before anything on a host
is touched and raises ``PolicyError`` naming the rule and the field at the first problem.

Canonical rule (``Rule``):

* ``src`` / ``dst``: ``None`` for any, else a list of ``netaddr.IPNetwork`` merged with
  ``netaddr.cidr_merge`` (segments expanded). ``src_prefixes`` / ``dst_prefixes`` hold the
  same sets as sorted ``(network_int, prefixlen)`` tuples, the form the model and the
  compiler compute with.
* ``protocol``: ``None`` for any, else the IANA number.
* ``dst_ports`` / ``src_ports``: ``None`` for any, else a sorted list of ``(low, high)``.
  Single ports stay single (they are more specific than a range holding them); ranges
  that overlap or touch are merged into one.
* ``directions``: a tuple of ``"egress"`` / ``"ingress"``.

Specificity is judged on this canonical form: ``[10.0.0.10/32, 10.0.0.11/32]`` is one
``/31`` for the verdict, exactly as if it had been written that way.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import re
import socket
import struct
import zlib

try:
    import netaddr
    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    netaddr = None
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = _exc

RULE_KEYS = ("name", "direction", "src", "dst", "protocol", "dst_ports", "src_ports", "action")
DIRECTIONS = {"egress": ("egress",), "ingress": ("ingress",), "both": ("egress", "ingress")}
DEFAULT_DIRECTION = "both"
ACTIONS = ("allow", "deny", "log")
DEFAULT_ACTIONS = ("allow", "deny")
ACTION_RANK = {"allow": 0, "log": 1, "deny": 2}   # a tie goes deny > log > allow
PROTOCOLS = {"any": None, "icmp": 1, "tcp": 6, "udp": 17}
PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
PORT_PROTOCOLS = (6, 17)
ANY_WORDS = ("any",)

_DOTTED = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?$")
_ADDRESS = struct.Struct("!I")
# The prefix lengths parse_cidr takes without a second look ("/032" is refused later).
_CLEAN_PREFIX_LENGTHS = dict((str(n), n) for n in range(33))
_PORT = re.compile(r"^\s*(\d{1,10})\s*(?:-\s*(\d{1,10})\s*)?$")


class PolicyError(Exception):
    """Bad policy input. ``str()`` reads ``rule 'web-to-db': dst_ports: port 70000 ...``."""

    def __init__(self, rule, field, message):
        self.rule = rule
        self.field = field
        self.message = message
        if rule is None:
            text = "%s: %s" % (field, message)
        else:
            text = "rule %r: %s: %s" % (str(rule), field, message)
        super(PolicyError, self).__init__(text)


def _require_netaddr():
    if not HAS_NETADDR:
        raise PolicyError(None, "netaddr", "the python netaddr library is required (%s)"
                          % NETADDR_IMPORT_ERROR)


# -- addresses -------------------------------------------------------------------------

def _mask(plen):
    return (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0


def int_to_ip(value):
    return "%d.%d.%d.%d" % (value >> 24 & 255, value >> 16 & 255, value >> 8 & 255, value & 255)


def _clean_cidr(text):
    """(network_int, prefixlen) for the common case, else None (parse_cidr says why).

    A dotted quad the C library reads and writes back unchanged has four octets 0-255
    without leading zeros; with a plain prefix length and no host bits it needs no other
    check.
    """
    address, slash, length = text.partition("/")
    try:
        packed = socket.inet_aton(address)
    except (OSError, ValueError):
        return None
    if socket.inet_ntoa(packed) != address:
        return None
    plen = _CLEAN_PREFIX_LENGTHS.get(length) if slash else 32
    value = _ADDRESS.unpack(packed)[0]
    if plen is None or value & _mask(plen) != value:
        return None
    return value, plen


def parse_cidr(text):
    """(network_int, prefixlen) for a strict dotted quad with an optional /len.

    Raises ValueError with a message for the user. Abbreviated forms that inet_aton would
    take ("10.1", "10") and leading zeros (octal to some tools) are refused: a firewall
    rule should mean one thing.
    """
    text = str(text).strip()
    clean = _clean_cidr(text)
    if clean is not None:
        return clean
    if ":" in text:
        raise ValueError("%s is an IPv6 address; IPv6 rules are not supported yet "
                         "(IPv4 only)" % text)
    match = _DOTTED.match(text)
    if not match:
        raise ValueError("%r is not an IPv4 address or CIDR (a.b.c.d or a.b.c.d/len)" % text)
    groups = match.groups()
    octets = [int(octet) for octet in groups[:4]]
    if max(octets) > 255:
        raise ValueError("%r is not an IPv4 address: an octet is over 255" % text)
    for octet in groups[:4]:
        if len(octet) > 1 and octet[0] == "0":
            raise ValueError("%r has a leading zero in an octet (ambiguous)" % text)
    plen = 32 if groups[4] is None else int(groups[4])
    if plen > 32:
        raise ValueError("%r: prefix length %d is over 32" % (text, plen))
    value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    network = value & _mask(plen)
    if network != value:
        raise ValueError("%s has host bits set; did you mean %s/%d?"
                         % (text, int_to_ip(network), plen))
    return network, plen


def looks_like_address(text):
    """An address attempt (to be parsed, errors and all) rather than a segment name."""
    text = str(text).strip()
    return ":" in text or text.isdigit() or (
        text[:1].isdigit() and ("." in text or "/" in text))


def _network(prefix):
    return netaddr.IPNetwork((prefix[0], prefix[1]))


def _merge(prefixes):
    """Sorted merged (int, plen) tuples; None when the union is everything."""
    unique = sorted(set(prefixes))
    if len(unique) > 1:
        merged = netaddr.cidr_merge([_network(p) for p in unique])
        unique = sorted((int(n.network), n.prefixlen) for n in merged)
    if any(plen == 0 for _net, plen in unique):
        return None
    return unique


def parse_segments(segments):
    """{name: merged (int, plen) list}; errors name the segment."""
    if segments is None:
        return {}
    if not isinstance(segments, dict):
        raise PolicyError(None, "segments", "must be a mapping of name to a list of CIDRs")
    out = {}
    for name in sorted(segments, key=str):
        where = "segments.%s" % name
        if not isinstance(name, str) or not name.strip():
            raise PolicyError(None, where, "a segment name must be a non-empty string")
        if name in ANY_WORDS or looks_like_address(name):
            raise PolicyError(None, where, "a segment name must not look like an address "
                              "or be 'any'")
        cidrs = segments[name]
        if isinstance(cidrs, str):
            cidrs = [cidrs]
        if not isinstance(cidrs, (list, tuple)) or not cidrs:
            raise PolicyError(None, where, "must be a non-empty list of CIDRs")
        prefixes = []
        for item in cidrs:
            try:
                prefixes.append(parse_cidr(item))
            except ValueError as exc:
                raise PolicyError(None, where, str(exc))
        merged = _merge(prefixes)
        out[name] = [(0, 0)] if merged is None else merged
    return out


def _address_items(value, rule, field):
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise PolicyError(rule, field, "must not be empty (omit it for any address)")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str):
            raise PolicyError(rule, field, "%r is not a CIDR or a segment name" % (item,))
    return [item.strip() for item in items]


def _addresses(value, segments, rule, field, memo=None):
    """(canonical items for to_rules, merged prefixes or None).

    memo: a dict kept for one normalize() (same segments), so an address list written
    many times (a server every exact rule names) is parsed once. Only successes go in it.
    """
    if value is None:
        return None, None
    if value.__class__ is str and value not in segments:
        # One address written plainly, as in every exact rule: nothing to merge or look up.
        clean = _clean_cidr(value)
        if clean is not None and clean[1]:
            # Clean means the text is already canonical (no leading zeros anywhere).
            return [value if "/" in value else value + "/32"], [clean]
    if memo is not None:
        memo_key = value if isinstance(value, str) else tuple(value)
        try:
            known = memo.get(memo_key)
        except TypeError:       # something unhashable in the list: the checks below say what
            return _addresses(value, segments, rule, field)
        if known is None:
            known = memo[memo_key] = _addresses(value, segments, rule, field)
        return known
    items = _address_items(value, rule, field)
    prefixes = []
    names = set()
    cidrs = set()
    anything = False
    for item in items:
        if item in segments:
            names.add(item)
            prefixes.extend(segments[item])
        elif item in ANY_WORDS:
            anything = True
        elif looks_like_address(item):
            try:
                prefix = parse_cidr(item)
            except ValueError as exc:
                raise PolicyError(rule, field, str(exc))
            cidrs.add(prefix)
            prefixes.append(prefix)
        else:
            raise PolicyError(rule, field, "unknown segment %r (known: %s)"
                              % (item, ", ".join(sorted(segments)) or "none"))
    merged = None if anything else _merge(prefixes)
    if merged is None:
        return None, None
    canonical = ["%s/%d" % (int_to_ip(n), p) for n, p in sorted(cidrs)] + sorted(names)
    return canonical, merged


# -- protocol and ports --------------------------------------------------------------------

def _protocol(value, rule):
    if value is None:
        return None
    if value.__class__ is str and value in PROTOCOLS:
        return PROTOCOLS[value]
    if isinstance(value, bool):
        raise PolicyError(rule, "protocol", "%r is not tcp, udp, icmp, any or 0-255" % (value,))
    text = str(value).strip().lower()
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and int(text) <= 255:
        return int(text)
    raise PolicyError(rule, "protocol", "%r is not tcp, udp, icmp, any or a number 0-255"
                      % (value,))


def protocol_label(protocol):
    if protocol is None:
        return "any"
    return PROTOCOL_NAMES.get(protocol, protocol)


def merge_ports(ranges):
    """Sorted (low, high) list: singles kept as singles, ranges merged if they overlap/touch."""
    if len(ranges) == 1:
        return list(ranges)
    singles = set(r for r in ranges if r[0] == r[1])
    spans = sorted(r for r in ranges if r[0] != r[1])
    merged = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return sorted(singles | set(merged))


def _ports(value, protocol, rule, field):
    if value is None:
        return None
    if protocol not in PORT_PROTOCOLS:
        raise PolicyError(rule, field, "ports need protocol tcp or udp, not %s"
                          % protocol_label(protocol))
    if value.__class__ is list and len(value) == 1:
        # One port as a number (bool is not int here): nothing to parse or merge.
        port = value[0]
        if port.__class__ is int and 0 <= port <= 65535:
            return [(port, port)]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise PolicyError(rule, field, "must not be empty (omit it for any port)")
    ranges = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise PolicyError(rule, field, "%r is not a port or a low-high range" % (item,))
        if isinstance(item, int):
            low = high = item
        else:
            match = _PORT.match(item)
            if not match:
                raise PolicyError(rule, field, "%r is not a port or a low-high range" % (item,))
            low = int(match.group(1))
            high = low if match.group(2) is None else int(match.group(2))
        for port in (low, high):
            if not 0 <= port <= 65535:
                raise PolicyError(rule, field, "port %d is out of range 0-65535" % port)
        if low > high:
            raise PolicyError(rule, field, "range %d-%d is backwards (low > high)" % (low, high))
        ranges.append((low, high))
    return merge_ports(ranges)


def port_specificity(ranges, port):
    """2 if a single port of ranges is port, 1 if a range holds it, 0 for any, None if no."""
    if ranges is None:
        return 0
    best = None
    for low, high in ranges:
        if low <= port <= high:
            spec = 2 if low == high else 1
            if best is None or spec > best:
                best = spec
    return best


def port_label(low, high):
    return low if low == high else "%d-%d" % (low, high)


# -- rules and policy ------------------------------------------------------------------

def policy_id_for(name):
    """Stable id from the name (crc32, 31 bits, never 0): hit counters survive converges."""
    return zlib.crc32(name.encode("utf-8")) & 0x7fffffff or 1


class Rule:
    """One canonical rule (see the module docstring)."""

    __slots__ = ("name", "index", "policy_id", "direction", "directions", "src_prefixes", "dst_prefixes", "protocol", "dst_ports", "src_ports",
                 "action", "exact", "_canonical")

    def __init__(self, name, index, direction, src, dst, protocol, dst_ports, src_ports,
                 action, canonical=None):
        self.name = name
        self.index = index
        self.policy_id = policy_id_for(name)
        self.direction = direction
        self.directions = DIRECTIONS[direction]
        self.src_prefixes = None if src is None else tuple(src)
        self.dst_prefixes = None if dst is None else tuple(dst)
        self.protocol = protocol
        self.dst_ports = dst_ports
        self.src_ports = src_ports
        self.action = action
        self.exact = _is_exact(self)
        self._canonical = canonical or {}

    @property
    def src(self):
        """None (any) or the merged list of netaddr.IPNetwork."""
        return None if self.src_prefixes is None else [_network(p) for p in self.src_prefixes]

    @property
    def dst(self):
        return None if self.dst_prefixes is None else [_network(p) for p in self.dst_prefixes]

    def remote(self, direction):
        """The remote peer's prefixes: dst when the container sends, src when it receives."""
        return self.dst_prefixes if direction == "egress" else self.src_prefixes

    def local(self, direction):
        return self.src_prefixes if direction == "egress" else self.dst_prefixes

    def match_key(self, direction):
        """What traffic the rule matches in one direction (for conflict detection)."""
        return (direction, self.src_prefixes, self.dst_prefixes, self.protocol,
                None if self.dst_ports is None else tuple(self.dst_ports),
                None if self.src_ports is None else tuple(self.src_ports))

    def to_dict(self):
        """The user-facing canonical form (diff, gathered)."""
        out = {"name": self.name, "direction": self.direction}
        for field in ("src", "dst"):
            if self._canonical.get(field) is not None:
                out[field] = list(self._canonical[field])
        out["protocol"] = protocol_label(self.protocol)
        for field in ("dst_ports", "src_ports"):
            ports = getattr(self, field)
            if ports is not None:
                out[field] = [port_label(low, high) for low, high in ports]
        out["action"] = self.action
        return out

    def __repr__(self):
        return "Rule(%r)" % (self.to_dict(),)


def _one_host(prefixes):
    return prefixes is not None and len(prefixes) == 1 and prefixes[0][1] == 32


def _one_port(ports):
    return ports is not None and len(ports) == 1 and ports[0][0] == ports[0][1]


def _is_exact(rule):
    """All five fields single-valued: the seed's exact policy_map rule."""
    return (rule.protocol in PORT_PROTOCOLS and _one_host(rule.src_prefixes) and
            _one_host(rule.dst_prefixes) and _one_port(rule.src_ports) and
            _one_port(rule.dst_ports))


class Policy:
    """Canonical rules (in the order given), merged segments, default action per direction."""

    def __init__(self, rules, segments, default_action):
        self.rules = rules
        self.segments = segments
        self.default_action = default_action
        self.by_name = dict((rule.name, rule) for rule in rules)

    def to_rules(self):
        return [rule.to_dict() for rule in self.rules]

    def segments_dict(self):
        return dict((name, ["%s/%d" % (int_to_ip(n), p) for n, p in prefixes])
                    for name, prefixes in sorted(self.segments.items()))


def _default_action(default_action):
    if default_action is None:
        default_action = {}
    if not isinstance(default_action, dict):
        raise PolicyError(None, "default_action", "must be a mapping with egress and ingress")
    unknown = sorted(set(default_action) - set(("egress", "ingress")), key=str)
    if unknown:
        raise PolicyError(None, "default_action.%s" % unknown[0],
                          "unknown direction (known: egress, ingress)")
    out = {}
    for direction in ("egress", "ingress"):
        value = default_action.get(direction)
        value = "allow" if value is None else value
        if value not in DEFAULT_ACTIONS:
            raise PolicyError(None, "default_action.%s" % direction,
                              "%r is not allow or deny" % (value,))
        out[direction] = value
    return out


_RULE_KEY_SET = frozenset(RULE_KEYS)


def _rule(raw, index, segments, memo=None):
    label = "#%d" % (index + 1)
    if not isinstance(raw, dict):
        raise PolicyError(label, "rule", "must be a mapping, got %s" % type(raw).__name__)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(label, "name", "is required (a non-empty string)")
    if not _RULE_KEY_SET.issuperset(raw):
        unknown = sorted(set(raw).difference(_RULE_KEY_SET), key=str)
        raise PolicyError(name, str(unknown[0]), "unknown field (known: %s)"
                          % ", ".join(RULE_KEYS))
    direction = raw.get("direction")
    direction = DEFAULT_DIRECTION if direction is None else direction
    if direction not in DIRECTIONS:
        raise PolicyError(name, "direction", "%r is not egress, ingress or both" % (direction,))
    action = raw.get("action")
    if action not in ACTIONS:
        raise PolicyError(name, "action", "%r is not allow, deny or log" % (action,))
    protocol = _protocol(raw.get("protocol"), name)
    src_items, src = _addresses(raw.get("src"), segments, name, "src", memo)
    dst_items, dst = _addresses(raw.get("dst"), segments, name, "dst", memo)
    dst_ports = _ports(raw.get("dst_ports"), protocol, name, "dst_ports")
    src_ports = _ports(raw.get("src_ports"), protocol, name, "src_ports")
    return Rule(name, index, direction, src, dst, protocol, dst_ports, src_ports, action,
                canonical={"src": src_items, "dst": dst_items})


def normalize(rules, segments, default_action):
    """Validate everything; a Policy, or PolicyError naming the rule and the field."""
    _require_netaddr()
    if rules is None:
        rules = []
    if not isinstance(rules, (list, tuple)):
        raise PolicyError(None, "rules", "must be a list of rules")
    segs = parse_segments(segments)
    defaults = _default_action(default_action)
    out = []
    names = {}
    ids = {}
    matches = {}
    memo = {}
    for index, raw in enumerate(rules):
        rule = _rule(raw, index, segs, memo)
        if rule.name in names:
            raise PolicyError(rule.name, "name", "duplicate rule name (rules #%d and #%d)"
                              % (names[rule.name] + 1, index + 1))
        names[rule.name] = index
        if rule.policy_id in ids:
            raise PolicyError(rule.name, "name", "its policy id %d collides with rule %r; "
                              "rename one of them" % (rule.policy_id, ids[rule.policy_id]))
        ids[rule.policy_id] = rule.name
        for direction in rule.directions:
            key = rule.match_key(direction)
            other = matches.get(key)
            if other is not None and other.action != rule.action:
                raise PolicyError(rule.name, "action", "conflicts with rule %r: both match the "
                                  "same %s traffic, one says %s, the other %s"
                                  % (other.name, direction, other.action, rule.action))
            matches.setdefault(key, rule)
        out.append(rule)
    return Policy(out, segs, defaults)

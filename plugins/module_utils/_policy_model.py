# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""The policy users write: validation, and the canonical form the compiler and model share.

``normalize(rules, segments, default_action)`` checks everything before anything on a host
is touched and raises ``PolicyError`` listing every problem found (``errors``), each naming
the rule (by name and 0-based position), the field, the item and the bad value::

    rule 'web-to-db' (rules[3]): dst_ports[0] '5432/tcp': not a port or a low-high range ...

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

import difflib
import re
import socket
import struct
import zlib

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi

try:
    from reprlib import Repr
except ImportError:  # pragma: no cover - Python 2
    from repr import Repr

try:
    import netaddr
    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    netaddr = None
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = _exc

RULE_KEYS = ("name", "direction", "src", "dst", "protocol", "dst_ports", "src_ports", "action",
             "tier")
DIRECTIONS = {"egress": ("egress",), "ingress": ("ingress",), "both": ("egress", "ingress")}
DEFAULT_DIRECTION = "both"
ACTIONS = ("allow", "deny", "log")
DEFAULT_ACTIONS = ("allow", "deny")
ACTION_RANK = {"allow": 0, "log": 1, "deny": 2}   # a tie goes deny > log > allow
PROTOCOLS = dict(_abi.PROTOCOLS, any=None)
PROTOCOL_NAMES = _abi.PROTOCOL_NAMES
PORT_PROTOCOLS = _abi.PORT_PROTOCOLS
ANY_WORDS = ("any",)

_DOTTED = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?$")
_ADDRESS = struct.Struct("!I")
# The prefix lengths parse_cidr takes without a second look ("/032" is refused later).
_CLEAN_PREFIX_LENGTHS = dict((str(n), n) for n in range(33))
_PORT = re.compile(r"^\s*(\d{1,10})\s*(?:-\s*(\d{1,10})\s*)?$")


# How many problems a message lists before "and N more".
MAX_SHOWN = 20

_SHORT = Repr()
_SHORT.maxstring = 48
_SHORT.maxother = 48
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2
NO_VALUE = object()     # "no value to show" (None is a value)
_KINDS = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"),
          (dict, "a mapping"), (list, "a list"), (tuple, "a list"))


def short_repr(value):
    """repr() cut short: a bad value is shown, not dumped."""
    try:
        text = _SHORT.repr(value)
    # Any object may come in, and its repr may raise anything.
    except Exception:  # pylint: disable=broad-except
        text = "<%s>" % type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def kind(value):
    """'a list', 'a mapping', ... for messages about a value of the wrong type."""
    if value is None:
        return "null"
    for cls, name in _KINDS:
        if isinstance(value, cls):
            return name
    return "a %s" % type(value).__name__


def rule_label(name, position):
    """rule 'web-to-db' (rules[3]), rule 'web-to-db' or rule rules[3]; None for neither."""
    if name is not None:
        name = str(name)
        shown = repr(name) if len(name) <= 100 else repr(name[:97] + "...")
        return "rule %s (%s)" % (shown, position) if position is not None else "rule " + shown
    if position is not None:
        return "rule %s" % position
    return None


class PolicyError(Exception):
    """Bad policy input.

    One problem: ``rule`` (the rule's name, None when it has no usable one or the problem is
    not in a rule), ``position`` (``rules[3]``, or where the caller says the rule came from),
    ``field`` (``dst_ports``, ``segments.web``), ``item`` (index in the field's list or
    None), ``value`` (the bad value, when there is one to show) and ``message``. ``str()``
    reads ``rule 'web-to-db' (rules[3]): dst_ports[0] 70000: port 70000 is out of range
    0-65535``.

    Every problem of a run: ``errors`` (the problems, in input order; a single problem is
    its own list). ``rule``, ``field`` and ``message`` are those of the first.
    """

    def __init__(self, rule, field, message, item=None, value=NO_VALUE, position=None,
                 errors=None):
        self.rule = rule
        self.field = field
        self.message = message
        self.item = item
        self.value = value
        self.position = position
        self.index = None       # the rule's index in the list normalize() was given
        self.errors = [self] if errors is None else errors
        super(PolicyError, self).__init__(message)

    @classmethod
    def combine(cls, errors):
        """One PolicyError holding every problem (the first's fields on top)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(first.rule, first.field, first.message, first.item, first.value,
                       first.position, errors=list(errors))
        combined.index = first.index
        return combined

    def describe(self):
        """This one problem as a line (for a combined error: the first)."""
        if self.field == "rule":        # the rule itself is not a mapping
            subject = "%s %s" % (self.position or "rule", short_repr(self.value))
            return "%s: %s" % (subject, self.message)
        subject = str(self.field)
        if self.item is not None:
            subject += "[%s]" % self.item
        if self.value is not NO_VALUE:
            subject += " " + short_repr(self.value)
        where = rule_label(self.rule, self.position)
        if where is None:
            return "%s: %s" % (subject, self.message)
        return "%s: %s: %s" % (where, subject, self.message)

    def lines(self, limit=MAX_SHOWN):
        """One line per problem, at most limit of them, then 'and N more'."""
        out = [error.describe() for error in self.errors[:limit]]
        if len(self.errors) > limit:
            out.append("and %d more" % (len(self.errors) - limit))
        return out

    def __str__(self):
        if len(self.errors) == 1:
            return self.describe()
        return "%d errors: %s" % (len(self.errors), "; ".join(self.lines()))


class _BrokenSegment(Exception):
    """A rule names a segment that is itself refused (its own error says why)."""


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

    Raises ValueError with a message for the user that does not repeat the text (the
    caller shows it). Abbreviated forms that inet_aton would take ("10.1", "10") and leading
    zeros (octal to some tools) are refused: a firewall rule should mean one thing.
    """
    text = str(text).strip()
    clean = _clean_cidr(text)
    if clean is not None:
        return clean
    if ":" in text:
        raise ValueError("an IPv6 address, and IPv6 rules are not supported yet (IPv4 only)")
    match = _DOTTED.match(text)
    if not match:
        raise ValueError("not an IPv4 address or CIDR (a.b.c.d or a.b.c.d/len)")
    groups = match.groups()
    octets = [int(octet) for octet in groups[:4]]
    if max(octets) > 255:
        raise ValueError("not an IPv4 address, an octet is over 255")
    for octet in groups[:4]:
        if len(octet) > 1 and octet[0] == "0":
            raise ValueError("a leading zero in an octet is ambiguous (octal to some tools)")
    plen = 32 if groups[4] is None else int(groups[4])
    if plen > 32:
        raise ValueError("prefix length %d is over 32" % plen)
    value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    network = value & _mask(plen)
    if network != value:
        raise ValueError("host bits are set (did you mean %s/%d?)" % (int_to_ip(network), plen))
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


def _known(names, limit=12):
    names = sorted(str(n) for n in names)
    if len(names) > limit:
        return ", ".join(names[:limit]) + ", ... (%d in all)" % len(names)
    return ", ".join(names) or "none"


# What people write for a rule field elsewhere (iptables, nftables, cloud security groups).
_FIELD_ALIASES = {"dport": "dst_ports", "dports": "dst_ports", "port": "dst_ports",
                  "ports": "dst_ports", "sport": "src_ports", "sports": "src_ports",
                  "proto": "protocol", "source": "src", "destination": "dst",
                  "dest": "dst", "from": "src", "to": "dst", "verdict": "action",
                  "target": "action"}


def close_match(word, choices):
    """', did you mean X?' for a likely typo, else ''."""
    word = str(word).strip()
    choices = [str(c) for c in choices]
    alias = _FIELD_ALIASES.get(word.lower())
    if alias in choices:
        return ", did you mean %s?" % alias
    found = difflib.get_close_matches(word.lower(), choices, 1, 0.75)
    return ", did you mean %s?" % found[0] if found else ""


def parse_segments(segments, errors=None):
    """{name: merged (int, plen) list}; errors name the segment, the item and its value.

    errors: a list to add every problem to (the broken segments then map to None, so rules
    naming them are skipped rather than reported again); without it the problems are
    raised together.
    """
    if segments is None:
        return {}
    problems = [] if errors is None else errors
    if not isinstance(segments, dict):
        problems.append(PolicyError(None, "segments", "must be a mapping of name to a list of "
                                    "CIDRs, got %s" % kind(segments), value=segments))
        if errors is None:
            raise PolicyError.combine(problems)
        return {}
    out = {}
    for name in sorted(segments, key=str):
        where = "segments.%s" % (name,)
        found = len(problems)
        if not isinstance(name, str) or not name.strip():
            problems.append(PolicyError(None, where, "a segment name must be a non-empty "
                                        "string"))
        elif name in ANY_WORDS or looks_like_address(name):
            problems.append(PolicyError(None, where, "a segment name must not look like an "
                                        "address or be 'any'"))
        cidrs = segments[name]
        if isinstance(cidrs, str):
            cidrs = [cidrs]
        if not isinstance(cidrs, (list, tuple)) or not cidrs:
            problems.append(PolicyError(None, where, "must be a non-empty list of CIDRs",
                                        value=segments[name]))
            cidrs = ()
        listed = isinstance(segments[name], (list, tuple))
        prefixes = []
        for position, item in enumerate(cidrs):
            at = position if listed else None
            if not isinstance(item, str):
                problems.append(PolicyError(None, where, "not a CIDR (got %s)" % kind(item),
                                            item=at, value=item))
                continue
            try:
                prefixes.append(parse_cidr(item))
            except ValueError as exc:
                problems.append(PolicyError(None, where, str(exc), item=at, value=item))
        if len(problems) > found:
            if isinstance(name, str):
                out[name] = None
            continue
        merged = _merge(prefixes)
        out[name] = [(0, 0)] if merged is None else merged
    if problems and errors is None:
        raise PolicyError.combine(problems)
    return out


def _address_items(value, rule, field):
    if isinstance(value, (list, tuple)):
        if not value:
            raise PolicyError(rule, field, "must not be empty (omit it for any address)",
                              value=value)
        items = list(enumerate(value))
    elif isinstance(value, str):
        items = [(None, value)]
    else:
        raise PolicyError(rule, field, "must be a CIDR, a segment name or a list of them "
                          "(got %s)" % kind(value), value=value)
    problems = []
    out = []
    for position, item in items:
        if not isinstance(item, str):
            problems.append(PolicyError(rule, field, "not a CIDR or a segment name (got %s)"
                                        % kind(item), item=position, value=item))
        else:
            out.append((position, item.strip()))
    return out, problems


def _addresses(value, segments, rule, field, memo=None):
    """(canonical items for to_rules, merged prefixes or None).

    memo: a dict kept for one normalize() (same segments), so an address list written
    many times (a server every exact rule names) is parsed once. Only successes go in it.
    Raises PolicyError (every bad item of the field) or _BrokenSegment.
    """
    if value is None:
        return None, None
    if value.__class__ is str and value not in segments:
        # One address written plainly, as in every exact rule: nothing to merge or look up.
        clean = _clean_cidr(value)
        if clean is not None and clean[1]:
            # Clean means the text is already canonical (no leading zeros anywhere).
            return [value if "/" in value else value + "/32"], [clean]
    if memo is not None and isinstance(value, (str, list, tuple)):
        memo_key = value if isinstance(value, str) else tuple(value)
        try:
            known = memo.get(memo_key)
        except TypeError:       # something unhashable in the list: the checks below say what
            return _addresses(value, segments, rule, field)
        if known is None:
            known = memo[memo_key] = _addresses(value, segments, rule, field)
        return known
    items, problems = _address_items(value, rule, field)
    prefixes = []
    names = set()
    cidrs = set()
    anything = False
    broken = None
    for position, item in items:
        if item in segments:
            if segments[item] is None:
                broken = item
                continue
            names.add(item)
            prefixes.extend(segments[item])
        elif item in ANY_WORDS:
            anything = True
        elif looks_like_address(item):
            try:
                prefix = parse_cidr(item)
            except ValueError as exc:
                problems.append(PolicyError(rule, field, str(exc), item=position, value=item))
                continue
            cidrs.add(prefix)
            prefixes.append(prefix)
        else:
            problems.append(PolicyError(
                rule, field, "unknown segment%s (known: %s)"
                % (close_match(item, [n for n in segments if segments[n] is not None]),
                   _known(segments)), item=position, value=item))
    if problems:
        problems.sort(key=lambda problem: problem.item or 0)
        raise PolicyError.combine(problems)
    if broken is not None:
        raise _BrokenSegment(broken)
    merged = None if anything else _merge(prefixes)
    if merged is None:
        return None, None
    canonical = ["%s/%d" % (int_to_ip(n), p) for n, p in sorted(cidrs)] + sorted(names)
    return canonical, merged


# -- protocol and ports --------------------------------------------------------------------

_PROTOCOL_NUMBER = re.compile(r"^[0-9]{1,3}$")


def _protocol(value, rule):
    if value is None:
        return None
    if value.__class__ is str and value in PROTOCOLS:
        return PROTOCOLS[value]
    text = None
    if isinstance(value, str):
        text = value.strip().lower()
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text is not None and _PROTOCOL_NUMBER.match(text) and int(text) <= 255:
        return int(text)
    extra = "" if isinstance(value, (str, int)) and not isinstance(value, bool) \
        else " (got %s)" % kind(value)
    raise PolicyError(rule, "protocol", "must be tcp, udp, icmp, any or an IANA number 0-255%s"
                      % extra, value=value)


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


# "5432/tcp", "53/udp", "8000-8080/tcp": a port with its protocol, as services(5) writes it.
_PORT_WITH_PROTOCOL = re.compile(r"^\s*(\d{1,5}(?:\s*-\s*\d{1,5})?)\s*/\s*(tcp|udp)\s*$",
                                 re.IGNORECASE)
_BAD_PROTOCOL = object()    # the rule's protocol is refused (its own error says why)


def _port_item(item, rule, field, position):
    """(low, high) for one port or range; PolicyError naming the item."""
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise PolicyError(rule, field, "not a port or a low-high range (got %s)" % kind(item),
                          item=position, value=item)
    if isinstance(item, int):
        low = high = item
    else:
        match = _PORT.match(item)
        if not match:
            hint = ""
            written = _PORT_WITH_PROTOCOL.match(item)
            if written:
                hint = (" (the protocol goes in its own field - protocol %s, %s [%s])"
                        % (written.group(2).lower(), field,
                           re.sub(r"\s+", "", written.group(1))))
            raise PolicyError(rule, field, "not a port or a low-high range%s" % hint,
                              item=position, value=item)
        low = int(match.group(1))
        high = low if match.group(2) is None else int(match.group(2))
    for port in (low, high):
        if not 0 <= port <= 65535:
            raise PolicyError(rule, field, "port %d is out of range 0-65535" % port,
                              item=position, value=item)
    if low > high:
        raise PolicyError(rule, field, "range %d-%d is backwards (low > high)" % (low, high),
                          item=position, value=item)
    return low, high


def _ports(value, protocol, rule, field):
    """None (any) or the merged (low, high) list; PolicyError with every bad item."""
    if value is None:
        return None
    if protocol in PORT_PROTOCOLS and value.__class__ is list and len(value) == 1:
        # One port as a number (bool is not int here): nothing to parse or merge.
        port = value[0]
        if port.__class__ is int and 0 <= port <= 65535:
            return [(port, port)]
    problems = []
    if protocol is not _BAD_PROTOCOL and protocol not in PORT_PROTOCOLS:
        problems.append(PolicyError(rule, field, "ports need protocol tcp or udp, not %s"
                                    % protocol_label(protocol), value=value))
    if isinstance(value, (list, tuple)):
        if not value:
            problems.append(PolicyError(rule, field, "must not be empty (omit it for any "
                                        "port)", value=value))
        items = value
        listed = True
    else:
        items = (value,)        # one port or range alone reads as a list of it
        listed = False
    ranges = []
    position = 0
    for item in items:
        if item.__class__ is int and 0 <= item <= 65535:
            ranges.append((item, item))
        else:
            try:
                ranges.append(_port_item(item, rule, field, position if listed else None))
            except PolicyError as exc:
                problems.append(exc)
        position += 1
    if problems:
        raise PolicyError.combine(problems)
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

POLICY_ID_MAX = 0x7fffffff     # ids are 1..2**31-1; 0 is the default action's


def policy_id_for(name):
    """The id a name asks for: its crc32, 31 bits, never 0. Two names can ask for the same
    one: assign_policy_ids() decides who gets it."""
    return zlib.crc32(name.encode("utf-8")) & POLICY_ID_MAX or 1


def next_policy_id(policy_id):
    """The probe: the next id up, from POLICY_ID_MAX back round to 1 (never 0)."""
    return policy_id + 1 if policy_id < POLICY_ID_MAX else 1


def assign_policy_ids(names, previous=None):
    """{name: policy id} for names: distinct, never 0, stable from converge to converge.

    The kernel knows a rule by its policy id only (hit counters, sessions, log events), so
    an id must stay with its name. previous is the table the host holds ({name: id}, or
    None when there is none):

    1. a name previous has keeps its id (an entry that is not a valid id, or an id that
       previous gives more than one of the names, is ignored: those names count as new);
    2. the other names, in sorted order, take policy_id_for(name) - the crc32, what every
       id was before ids were assigned, so a host keeps its ids across the upgrade - or,
       when that id is taken, the next free one by next_policy_id (linear probe, up, from
       2**31-1 back round to 1).

    Ids of names no longer present are free again. Without previous the ids depend only on
    the set of names, not their order. At most 2**31-1 names (far more than fit a map).
    """
    ids = {}
    new = []
    if previous:
        get = previous.get
        for name in names:
            policy_id = get(name)
            if policy_id.__class__ is int and 0 < policy_id <= POLICY_ID_MAX:
                ids[name] = policy_id
            else:
                new.append(name)
        taken = set(ids.values())
        if len(taken) != len(ids):      # a damaged table: no holder of a shared id keeps it
            holders = {}
            for name, policy_id in ids.items():
                holders.setdefault(policy_id, []).append(name)
            for policy_id, shared in holders.items():
                if len(shared) > 1:
                    taken.discard(policy_id)
                    for name in shared:
                        del ids[name]
                        new.append(name)
    else:
        taken = set()
        new = list(names)
    new.sort()
    for name in new:
        policy_id = policy_id_for(name)
        while policy_id in taken:
            policy_id = next_policy_id(policy_id)
        ids[name] = policy_id
        taken.add(policy_id)
    return ids


class Rule:
    """One canonical rule (see the module docstring)."""

    __slots__ = ("name", "index", "policy_id", "direction", "directions", "src_prefixes", "dst_prefixes", "protocol", "dst_ports", "src_ports",
                 "action", "exact", "tier", "tier_rank", "_canonical")

    def __init__(self, name, index, direction, src, dst, protocol, dst_ports, src_ports,
                 action, canonical=None):
        self.name = name
        self.index = index
        self.policy_id = policy_id_for(name)   # until normalize() assigns the policy's ids
        self.direction = direction
        self.directions = DIRECTIONS[direction]
        self.src_prefixes = None if src is None else tuple(src)
        self.dst_prefixes = None if dst is None else tuple(dst)
        self.protocol = protocol
        self.dst_ports = dst_ports
        self.src_ports = src_ports
        self.action = action
        self.exact = _is_exact(self)
        self.tier = None            # the tier named, None: the last tier (or no tiers)
        self.tier_rank = 0          # bigger decides first; the last tier is 0
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
        """What traffic the rule matches in one direction, in its tier (two rules of one
        tier that match the same traffic must agree; a higher tier may override)."""
        return (self.tier_rank, direction, self.src_prefixes, self.dst_prefixes, self.protocol,
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
        if self.tier is not None:
            out["tier"] = self.tier
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

    def __init__(self, rules, segments, default_action, tiers=()):
        self.rules = rules
        self.segments = segments
        self.default_action = default_action
        self.tiers = list(tiers)        # highest first; [] when the policy declares none
        self.by_name = dict((rule.name, rule) for rule in rules)

    @property
    def rule_ids(self):
        """{name: policy id}: the table the host keeps with the policy source."""
        return dict((rule.name, rule.policy_id) for rule in self.rules)

    def to_rules(self):
        return [rule.to_dict() for rule in self.rules]

    def segments_dict(self):
        return dict((name, ["%s/%d" % (int_to_ip(n), p) for n, p in prefixes])
                    for name, prefixes in sorted(self.segments.items()))


def _default_action(default_action, problems):
    out = {"egress": "allow", "ingress": "allow"}
    if default_action is None:
        return out
    if not isinstance(default_action, dict):
        problems.append(PolicyError(None, "default_action", "must be a mapping with egress and "
                                    "ingress, got %s" % kind(default_action),
                                    value=default_action))
        return out
    for key in sorted(set(default_action) - set(("egress", "ingress")), key=str):
        problems.append(PolicyError(None, "default_action.%s" % (key,), "unknown direction%s "
                                    "(known: egress, ingress)"
                                    % close_match(key, ("egress", "ingress"))))
    for direction in ("egress", "ingress"):
        value = default_action.get(direction)
        value = "allow" if value is None else value
        if not isinstance(value, str) or value not in DEFAULT_ACTIONS:
            problems.append(PolicyError(None, "default_action.%s" % direction,
                                        "must be allow or deny", value=value))
        else:
            out[direction] = value
    return out


_RULE_KEY_SET = frozenset(RULE_KEYS)
_TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def parse_tiers(tiers, problems):
    """The declared tier names, highest first ([] for none), with a problem per bad one."""
    if tiers is None:
        return []
    if not isinstance(tiers, (list, tuple)):
        problems.append(PolicyError(None, "tiers", "must be a list of tier names, highest "
                                    "first, got %s" % kind(tiers), value=tiers))
        return []
    out = []
    for position, name in enumerate(tiers):
        field = "tiers[%d]" % position
        if not isinstance(name, str) or not _TIER_NAME.match(name):
            problems.append(PolicyError(None, field, "must be a name of letters, digits, "
                                        "'_', '.' or '-' (at most 63)", value=name))
        elif name in out:
            problems.append(PolicyError(None, field, "is declared twice (tiers[%d] too)"
                                        % out.index(name), value=name))
        else:
            out.append(name)
    return out


def _set_tier(rule, raw, tiers, problems):
    """Put rule in the tier it names (or the last one); False, with a problem, if it
    names one the policy does not declare."""
    name = raw.get("tier")
    if name is None:
        rule.tier, rule.tier_rank = None, 0
        return True
    if name in tiers:
        rule.tier, rule.tier_rank = name, len(tiers) - 1 - tiers.index(name)
        return True
    if not tiers:
        message = "names a tier, but the policy declares none (list them in tiers, " \
                  "highest first)"
    elif isinstance(name, str):
        message = "must be one of the declared tiers (%s)%s" % (
            ", ".join(tiers), close_match(name, tiers))
    else:
        message = "must be a tier name (%s), got %s" % (", ".join(tiers), kind(name))
    problems.append(PolicyError(rule.name, "tier", message, value=name))
    return False


def _bad_choice(value, field, choices, rule, problems):
    """Add the problem of a direction or action that is missing or not one of choices."""
    if value is None:
        problems.append(PolicyError(rule, field, "is required (%s)" % _or(choices)))
        return
    if isinstance(value, str):
        extra = close_match(value.lower(), choices)
    else:
        extra = " (got %s)" % kind(value)
    problems.append(PolicyError(rule, field, "must be %s%s" % (_or(choices), extra),
                                value=value))


def _or(choices):
    choices = list(choices)
    return "%s or %s" % (", ".join(choices[:-1]), choices[-1])


def usable_name(raw):
    """The rule's name when it is a non-empty string (a plain str), else None."""
    name = raw.get("name") if isinstance(raw, dict) else None
    return str(name) if isinstance(name, str) and name.strip() else None


def name_problem(raw, position=None):
    """The PolicyError of a raw rule without a usable name (None when it has one)."""
    if not isinstance(raw, dict):
        return PolicyError(None, "rule", "a rule must be a mapping of its fields (%s), got %s"
                           % (", ".join(RULE_KEYS), kind(raw)), value=raw, position=position)
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        return None
    if name is None:
        return PolicyError(None, "name", "is required (a non-empty string)", position=position)
    return PolicyError(None, "name", "must be a non-empty string%s"
                       % ("" if isinstance(name, str) else " (got %s)" % kind(name)),
                       value=name, position=position)


def _rule(raw, index, segments, memo, problems):
    """A Rule, or None with every problem of the rule added to problems (in field order).

    The problems carry the rule's name when it has a usable one and its index; normalize()
    turns the index into the position the caller knows it by. Written for the valid rule:
    110,000 of them go through here in one converge.
    """
    if not isinstance(raw, dict):
        problems.append(name_problem(raw))
        problems[-1].index = index
        return None
    found = len(problems)
    name = raw.get("name")
    if name.__class__ is str and name.strip():
        rule = name
    else:
        rule = name = usable_name(raw)
        if name is None:
            problems.append(name_problem(raw))
    if not _RULE_KEY_SET.issuperset(raw):
        for key in sorted(set(raw).difference(_RULE_KEY_SET), key=str):
            problems.append(PolicyError(rule, str(key), "unknown rule field%s (known: %s)"
                                        % (close_match(key, RULE_KEYS), ", ".join(RULE_KEYS))))
    direction = raw.get("direction")
    if direction is None:
        direction = DEFAULT_DIRECTION
    elif direction.__class__ is not str or direction not in DIRECTIONS:
        if not (isinstance(direction, str) and direction in DIRECTIONS):
            _bad_choice(direction, "direction", DIRECTIONS, rule, problems)
    action = raw.get("action")
    if action.__class__ is not str or action not in ACTIONS:
        if not (isinstance(action, str) and action in ACTIONS):
            _bad_choice(action, "action", ACTIONS, rule, problems)
    try:
        protocol = _protocol(raw.get("protocol"), rule)
    except PolicyError as exc:
        problems.append(exc)
        protocol = _BAD_PROTOCOL
    broken = False
    src_items = src = dst_items = dst = dst_ports = src_ports = None
    try:
        src_items, src = _addresses(raw.get("src"), segments, rule, "src", memo)
    except PolicyError as exc:
        problems.extend(exc.errors)
    except _BrokenSegment:
        broken = True
    try:
        dst_items, dst = _addresses(raw.get("dst"), segments, rule, "dst", memo)
    except PolicyError as exc:
        problems.extend(exc.errors)
    except _BrokenSegment:
        broken = True
    try:
        dst_ports = _ports(raw.get("dst_ports"), protocol, rule, "dst_ports")
    except PolicyError as exc:
        problems.extend(exc.errors)
    try:
        src_ports = _ports(raw.get("src_ports"), protocol, rule, "src_ports")
    except PolicyError as exc:
        problems.extend(exc.errors)
    if len(problems) > found:
        for problem in problems[found:]:
            problem.index = index
        return None
    if broken:
        return None
    return Rule(name, index, direction, src, dst, protocol, dst_ports, src_ports, action,
                canonical={"src": src_items, "dst": dst_items})


def _position(index):
    return "rules[%d]" % index


def normalize(rules, segments, default_action, position_of=None, previous_ids=None,
              tiers=None):
    """Validate everything; a Policy, or one PolicyError listing every problem.

    position_of(index): how the caller names the rule at that index of rules in messages
    (default ``rules[index]``, 0-based), for rules that came from somewhere else.
    previous_ids: the {name: policy id} table the host holds, if any: the rules' policy
    ids are assign_policy_ids(names, previous_ids).
    tiers: the tier names, highest first: a packet is decided by the highest tier with a
    rule that matches it, within it by the most specific rule; a rule naming no tier is in
    the last one.
    """
    _require_netaddr()
    if rules is None:
        rules = []
    if position_of is None:
        position_of = _position
    problems = []
    if not isinstance(rules, (list, tuple)):
        problems.append(PolicyError(None, "rules", "must be a list of rules, got %s"
                                    % kind(rules), value=rules))
        rules = []
    segs = parse_segments(segments, problems)
    defaults = _default_action(default_action, problems)
    tier_names = parse_tiers(tiers, problems)
    out = []
    names = {}
    matches = {}
    memo = {}
    for index, raw in enumerate(rules):
        found = len(problems)
        rule = _rule(raw, index, segs, memo, problems)
        if rule is not None and raw.get("tier") is not None and \
                not _set_tier(rule, raw, tier_names, problems):
            problems[-1].index = index
            rule = None
        if rule is not None:
            name = rule.name
        else:
            name = usable_name(raw)
            if name is None:
                continue
        if name in names:
            problems.append(PolicyError(name, "name", "the same name as %s (names must be "
                                        "unique)" % position_of(names[name])))
            problems[-1].index = index
            continue
        names[name] = index
        if rule is None:
            continue
        for direction in rule.directions:
            key = rule.match_key(direction)
            other = matches.get(key)
            if other is not None and other.action != rule.action:
                problems.append(PolicyError(
                    rule.name, "action", "conflicts with %s - both match the same %s traffic, "
                    "one says %s, the other %s"
                    % (rule_label(other.name, position_of(other.index)), direction,
                       other.action, rule.action), value=rule.action))
                problems[-1].index = index
                break
            matches.setdefault(key, rule)
        else:
            out.append(rule)
    if problems:
        for problem in problems:
            if problem.index is not None and problem.position is None:
                problem.position = position_of(problem.index)
        raise PolicyError.combine(problems)
    ids = assign_policy_ids([rule.name for rule in out], previous_ids)
    for rule in out:
        rule.policy_id = ids[rule.name]
    return Policy(out, segs, defaults, tier_names)

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""microseg_explain: what the first packet of a flow gets, which rule decides it and why,
and whether the kernel's compiled maps decide the same.

Two answers per flow and direction:

* the reference model (_verdict.py) over the policy the host holds - the source stored
  with the maps for the active set (_converge.read_source), normalized again: every
  matching rule in rank order, each with its rank fields and why it ranks there;
* the kernel: lookup_policy()'s walk (_lookup.py) over the pinned maps of the active set,
  each lookup done by the kernel itself, and the policy id it ends on named by the policy.

``agree`` says whether both give the same action and policy id. Nothing is written.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import difflib
import os

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _lookup
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model
from ansible_collections.ebpf.microseg.plugins.module_utils import _verdict

FLOW_KEYS = ("src", "dst", "protocol", "dst_port", "src_port", "direction")
FLOW_DIRECTIONS = ("egress", "ingress", "both")
DEFAULT = "default"
# _verdict.rank()'s tuple, field by field, compared left to right (bigger wins).
RANK_FIELDS = ("tier", "exact", "remote_prefix", "local_prefix", "dst_port", "src_port",
               "protocol", "action")
RANK_MEANING = {
    "tier": "the higher tier decides first",
    "exact": "an exact 5-tuple rule beats every other",
    "remote_prefix": "the longer prefix on the remote peer wins",
    "local_prefix": "the longer prefix on the container's side wins",
    "dst_port": "a single destination port (2) beats a range (1), a range beats any (0)",
    "src_port": "a single source port (2) beats a range (1), a range beats any (0)",
    "protocol": "a protocol (1) beats any (0)",
    "action": "on a tie deny (2) beats log (1), log beats allow (0)",
}
# Reads racing a converge's switch are read again; a host switching this often is busy.
READ_ATTEMPTS = 3
MAX_WARNINGS = 10


class ExplainError(Exception):
    """Bad input, or a host that cannot be explained; nothing was read or written.

    errors: one line per problem of the input (None for a problem of the host).
    """

    def __init__(self, message, errors=None):
        super(ExplainError, self).__init__(message)
        self.errors = errors


# ---- input -------------------------------------------------------------------------------

def _did_you_mean(word, choices):
    found = difflib.get_close_matches(str(word).lower(), choices, 1, 0.6)
    return ", did you mean %s?" % found[0] if found else ""


def _address(value):
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 address (a string), got %s"
                         % _policy_model.kind(value))
    network, plen = _policy_model.parse_cidr(value)
    if plen != 32:
        raise ValueError("must be one address, not a CIDR (a packet has one source and one "
                         "destination)")
    return _policy_model.int_to_ip(network)


def _protocol(value):
    text = None
    if isinstance(value, str):
        text = value.strip().lower()
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    if text in _abi.PROTOCOLS:
        return _abi.PROTOCOLS[text]
    if text is not None and text.isdigit() and int(text) <= 255:
        return int(text)
    if text == "any":
        raise ValueError("a packet has one protocol: tcp, udp, icmp or an IANA number 0-255")
    raise ValueError("must be tcp, udp, icmp or an IANA number 0-255%s"
                     % ("" if isinstance(value, (str, int)) and not isinstance(value, bool)
                        else " (got %s)" % _policy_model.kind(value)))


def _port(value):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a port number 0-65535 (got %s)" % _policy_model.kind(value))
    if not 0 <= value <= 65535:
        raise ValueError("port %d is out of range 0-65535" % value)
    return value


def parse_flows(flows):
    """[{src, dst, protocol (number), src_port, dst_port, directions}]; ExplainError listing
    every problem, each naming flows[i] and the field."""
    if not isinstance(flows, (list, tuple)) or not flows:
        message = "flows: must be a non-empty list of flows (each a mapping of %s)" \
            % ", ".join(FLOW_KEYS)
        raise ExplainError(message + ", nothing was read", [message])
    problems = []
    out = []
    for index, raw in enumerate(flows):
        where = "flows[%d]" % index

        def bad(field, message, value=None, where=where):
            shown = "" if value is None else " %s" % _policy_model.short_repr(value)
            problems.append("%s.%s%s: %s" % (where, field, shown, message))

        if not isinstance(raw, dict):
            problems.append("%s: must be a mapping of %s, got %s"
                            % (where, ", ".join(FLOW_KEYS), _policy_model.kind(raw)))
            continue
        for key in sorted(set(raw) - set(FLOW_KEYS), key=str):
            bad(key, "unknown field%s (known: %s)"
                % (_did_you_mean(key, FLOW_KEYS), ", ".join(FLOW_KEYS)))
        flow = {}
        for field in ("src", "dst"):
            if raw.get(field) is None:
                bad(field, "is required (an IPv4 address)")
                continue
            try:
                flow[field] = _address(raw[field])
            except ValueError as exc:
                bad(field, str(exc), raw[field])
        if raw.get("protocol") is None:
            bad("protocol", "is required (tcp, udp, icmp or an IANA number 0-255)")
        else:
            try:
                flow["protocol"] = _protocol(raw["protocol"])
            except ValueError as exc:
                bad("protocol", str(exc), raw["protocol"])
        for field in ("dst_port", "src_port"):
            value = raw.get(field)
            if value is None:
                if field == "dst_port" and flow.get("protocol") in _abi.PORT_PROTOCOLS:
                    bad(field, "is required for %s"
                        % _policy_model.protocol_label(flow["protocol"]))
                flow[field] = 0
                continue
            try:
                flow[field] = _port(value)
            except ValueError as exc:
                bad(field, str(exc), value)
                continue
            if flow[field] and "protocol" in flow and \
                    flow["protocol"] not in _abi.PORT_PROTOCOLS:
                bad(field, "ports apply to tcp and udp only, not %s (omit it)"
                    % _policy_model.protocol_label(flow["protocol"]), value)
        direction = raw.get("direction")
        direction = "both" if direction is None else direction
        if direction not in FLOW_DIRECTIONS:
            extra = _did_you_mean(direction, FLOW_DIRECTIONS) if isinstance(direction, str) \
                else " (got %s)" % _policy_model.kind(direction)
            bad("direction", "must be egress, ingress or both%s" % extra, direction)
        else:
            flow["direction"] = direction
        out.append(flow)
    if problems:
        shown = problems[:_policy_model.MAX_SHOWN]
        if len(problems) > len(shown):
            shown.append("and %d more" % (len(problems) - len(shown)))
        if len(problems) == 1:
            raise ExplainError("%s (nothing was read)" % problems[0], shown)
        raise ExplainError("%d errors in flows, nothing was read: %s"
                           % (len(problems), "; ".join(shown)), shown)
    return out


def packets(flow):
    """[(direction, packet)]: the same 5-tuple as the sender's hook sees it (egress: src is
    the container) and as the receiver's hook sees it (ingress: dst is the container)."""
    directions = ("egress", "ingress") if flow["direction"] == "both" else (flow["direction"],)
    return [(direction, {"direction": direction, "src": flow["src"], "dst": flow["dst"],
                         "protocol": flow["protocol"], "src_port": flow["src_port"],
                         "dst_port": flow["dst_port"]})
            for direction in directions]


# ---- the reference model ------------------------------------------------------------------

def _rank_dict(rank):
    return dict(zip(RANK_FIELDS, rank))


def _first_difference(higher, lower):
    for field, above, below in zip(RANK_FIELDS, higher, lower):
        if above != below:
            return field, above, below
    return None


def _why(position, found, names):
    """Why found[position] ranks where it does: against the rule just above it (the
    winner: against the runner-up)."""
    rank, rule = found[position]
    if len(found) == 1:
        return None, "decides: the only matching rule"
    if position == 0:
        other_rank, other = found[1]
        difference = _first_difference(rank, other_rank)
        if difference is None:
            return None, ("decides: ties with %r on every field and is listed first (%s)"
                          % (other.name, names(rule)))
        field, mine, theirs = difference
        return field, "decides: beats %r on %s (%s > %s: %s)" % (
            other.name, field, mine, theirs, RANK_MEANING[field])
    other_rank, other = found[position - 1]
    difference = _first_difference(other_rank, rank)
    if difference is None:
        return None, ("ties with %r on every field; %r is listed first"
                      % (other.name, other.name))
    field, theirs, mine = difference
    return field, "below %r on %s (%s < %s: %s)" % (
        other.name, field, mine, theirs, RANK_MEANING[field])


def model_answer(policy, direction, packet):
    """The reference model's answer: verdict, decided_by, policy_id, matching_rules.

    _verdict.verdict() is the first of _verdict.candidates() (or the default): the same
    scan, done once here.
    """
    found = _verdict.candidates(policy, direction, packet["src"], packet["dst"],
                                packet["protocol"], packet["src_port"], packet["dst_port"])

    def names(rule):
        return "rules[%d]" % rule.index

    matching = []
    for position, (rank, rule) in enumerate(found):
        differs_on, why = _why(position, found, names)
        entry = {"name": rule.name, "action": rule.action, "policy_id": rule.policy_id,
                 "position": names(rule), "rank": _rank_dict(rank), "differs_on": differs_on,
                 "why": why}
        if rule.tier is not None:
            entry["tier_name"] = rule.tier
        matching.append(entry)
    if found:
        best = found[0][1]
        return {"verdict": best.action, "decided_by": best.name, "policy_id": best.policy_id,
                "matching_rules": matching}
    return {"verdict": policy.default_action[direction], "decided_by": DEFAULT, "policy_id": 0,
            "matching_rules": []}


# ---- the host ------------------------------------------------------------------------------

def model_policy(source, kernel_default):
    """The Policy the model decides with: the stored source of the active set normalized
    again (its default actions are those converged), or no rules and the config's defaults
    when nothing was converged."""
    if not source:
        return _policy_model.normalize([], {}, kernel_default)
    try:
        return _policy_model.normalize(source.get("rules") or [], source.get("segments") or {},
                                       source.get("default_action") or kernel_default,
                                       # the ids the converge gave, so kernel ids map back
                                       previous_ids=_converge.source_rule_ids(source),
                                       tiers=source.get("tiers"))
    except _policy_model.PolicyError as exc:
        raise ExplainError("the policy stored with the maps no longer normalizes (%s); "
                           "converge it again with ebpf.microseg.microseg_policy" % exc)


def kernel_default_actions(config):
    return {"egress": _abi.ACTION_NAMES.get(config.default_action[0], "allow"),
            "ingress": _abi.ACTION_NAMES.get(config.default_action[1], "allow")}


def _rule_name(by_id, policy_id):
    if policy_id == 0:
        return DEFAULT
    name = by_id.get(policy_id)
    return name if name is not None else "policy id %d (no rule of the stored policy)" % policy_id


def kernel_answer(pinned, policy_set, kernel_default, by_id, packet):
    decision = _lookup.decide(pinned.lookup, policy_set, kernel_default, packet)
    return {"verdict": decision.action, "decided_by": _rule_name(by_id, decision.policy_id),
            "policy_id": decision.policy_id, "decided_at": decision.decided_at,
            "lookups": decision.describe_steps()}


def _combined(verdicts):
    for action in ("deny", "log"):
        if action in verdicts:
            return action
    return "allow"


def explain_flows(policy, flows, kernel=None):
    """(flow results, disagreements) for parsed flows.

    kernel(packet): the kernel's answer for a packet, or None to give the model's alone.
    """
    results = []
    disagreements = []
    for index, flow in enumerate(flows):
        entry = {"src": flow["src"], "dst": flow["dst"],
                 "protocol": _policy_model.protocol_label(flow["protocol"]),
                 "src_port": flow["src_port"], "dst_port": flow["dst_port"],
                 "direction": flow["direction"]}
        verdicts = []
        for direction, packet in packets(flow):
            answer = model_answer(policy, direction, packet)
            answer["container"] = packet["src"] if direction == "egress" else packet["dst"]
            verdicts.append(answer["verdict"])
            if kernel is not None:
                answer["kernel"] = got = kernel(packet)
                answer["agree"] = (got["verdict"], got["policy_id"]) == \
                    (answer["verdict"], answer["policy_id"])
                if not answer["agree"]:
                    disagreements.append({
                        "flow": index, "direction": direction,
                        "model": {"verdict": answer["verdict"],
                                  "decided_by": answer["decided_by"]},
                        "kernel": {"verdict": got["verdict"], "decided_by": got["decided_by"],
                                   "decided_at": got["decided_at"]},
                        "message": "flows[%d] %s (%s): the model says %s by %s, the kernel's "
                                   "maps say %s by %s (decided at %s)"
                                   % (index, direction, describe_flow(flow), answer["verdict"],
                                      _quoted(answer["decided_by"]), got["verdict"],
                                      _quoted(got["decided_by"]), got["decided_at"])})
            entry[direction] = answer
        entry["verdict"] = _combined(verdicts)
        results.append(entry)
    return results, disagreements


def _quoted(name):
    return name if name == DEFAULT or name.startswith("policy id ") else repr(name)


def describe_flow(flow):
    protocol = _policy_model.protocol_label(flow["protocol"])
    if flow["protocol"] in _abi.PORT_PROTOCOLS:
        return "%s:%d -> %s %s/%d" % (flow["src"], flow["src_port"], flow["dst"], protocol,
                                      flow["dst_port"])
    return "%s -> %s %s" % (flow["src"], flow["dst"], protocol)


def has_program(pin_path):
    return os.path.exists(os.path.join(pin_path, "config_map"))


def run(pin_path, raw_flows):
    """The module's result: parsed input first (nothing read on bad input), then one
    consistent read of the active set."""
    flows = parse_flows(raw_flows)
    if not has_program(pin_path):
        raise ExplainError("no microseg program under %s: run ebpf.microseg.microseg_program "
                           "first" % pin_path)
    names = list(_converge.POLICY_MAPS) + ["config_map"]
    try:
        pinned = _maps.PinnedMaps(pin_path, names=names)
    except OSError as exc:
        raise ExplainError("cannot open the microseg maps under %s (%s): run "
                           "ebpf.microseg.microseg_program first" % (pin_path, exc))
    with pinned:
        for _attempt in range(READ_ATTEMPTS):
            config = pinned.config()
            active = config.policy_epoch & 1
            source = _converge.read_source(pin_path, active)
            kernel_default = kernel_default_actions(config)
            policy = model_policy(source, kernel_default)
            by_id = dict((rule.policy_id, rule.name) for rule in policy.rules)
            results, disagreements = explain_flows(
                policy, flows,
                lambda packet: kernel_answer(pinned, active, kernel_default, by_id, packet))
            # A converge that switched sets meanwhile: this read may have mixed the two.
            if pinned.config().policy_epoch == config.policy_epoch:
                break
    warnings = [d["message"] for d in disagreements[:MAX_WARNINGS]]
    if len(disagreements) > MAX_WARNINGS:
        warnings.append("and %d more disagreements (see disagreements)"
                        % (len(disagreements) - MAX_WARNINGS))
    if source and source.get("default_action") and \
            dict(source["default_action"]) != kernel_default:
        warnings.append("the converged policy's default actions are %s but config_map holds "
                        "%s" % (_short_default(source["default_action"]),
                                _short_default(kernel_default)))
    if not source:
        warnings.append("no policy was converged under %s: the model has no rules and the "
                        "config's default actions" % pin_path)
    return {"changed": False, "pin_path": pin_path, "generation": config.policy_epoch,
            "active_set": active, "default_action": kernel_default,
            "rules": len(policy.rules), "flows": results, "disagreements": disagreements,
            "agree": not disagreements, "warnings": warnings}


def _short_default(default_action):
    return "egress %s, ingress %s" % (default_action.get("egress"),
                                      default_action.get("ingress"))

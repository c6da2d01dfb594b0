# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_policy end to end: desired state -> compile -> compare -> plan -> apply."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import contextlib
import copy
import gc
import hashlib
import json
import os

from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model

EMPTY = {"rules": [], "segments": {}, "default_action": {"egress": "allow", "ingress": "allow"}}


class PolicyInputError(Exception):
    """Bad input or a host that cannot take the policy; nothing was written."""


def _rule_name(rule, index):
    name = rule.get("name") if isinstance(rule, dict) else None
    return name if name else "#%d" % (index + 1)


def desired_document(state, current, params):
    """The full policy document the host should hold after this run."""
    rules = params["rules"] or []
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict) or not rule.get("name"):
            raise PolicyInputError("rules[%d]: name is required" % index)
    # Rules are only replaced or updated at the top level: the held dicts are not changed
    # in place (merged copies before updating), so no copies are needed here.
    order = [r["name"] for r in current["rules"]]
    held = dict((r["name"], r) for r in current["rules"])
    segments = dict(current["segments"])
    default_action = dict(current["default_action"])

    if state in ("merged", "replaced"):
        for rule in rules:
            name = rule["name"]
            if state == "merged" and name in held:
                merged = dict(held[name])
                merged.update(dict((k, v) for k, v in rule.items() if v is not None))
                held[name] = merged
            else:
                if name not in held:
                    order.append(name)
                held[name] = dict((k, v) for k, v in rule.items() if v is not None)
        segments.update(params["segments"] or {})
    elif state == "overridden":
        held = dict((r["name"], dict((k, v) for k, v in r.items() if v is not None))
                    for r in rules)
        order = [r["name"] for r in rules]
        if params["segments"] is not None:
            segments = dict(params["segments"])
    elif state == "deleted":
        names = set(r["name"] for r in rules)
        if names:
            # Deleting a rule the host does not hold is not an error: it is already gone.
            order = [n for n in order if n not in names]
        else:
            order = []
    if params.get("default_action"):
        for direction in ("egress", "ingress"):
            if params["default_action"].get(direction):
                default_action[direction] = params["default_action"][direction]
    return {"rules": [held[name] for name in order], "segments": segments,
            "default_action": default_action}


def normalize(document):
    try:
        policy = _policy_model.normalize(document["rules"], document["segments"],
                                         document["default_action"])
    except _policy_model.PolicyError as exc:
        raise PolicyInputError(str(exc))
    canonical = {"rules": policy.to_rules(), "segments": _canonical_segments(document),
                 "default_action": dict(document["default_action"])}
    return policy, canonical


def _canonical_segments(document):
    out = {}
    for name, cidrs in sorted(document["segments"].items()):
        if isinstance(cidrs, str):
            cidrs = [cidrs]
        out[name] = sorted(str(c) for c in cidrs)
    return out


def _entries_view(compiled):
    out = {}
    for name in _converge.POLICY_MAPS:
        out[name] = [{"key": key.as_dict(), "value": value.as_dict()}
                     for key, value in getattr(compiled, name)]
    return out


@contextlib.contextmanager
def _collector_paused():
    """A large policy is hundreds of thousands of small acyclic objects: the cyclic
    collector would walk them over and over while they are built (40% of a 110,000-rule
    converge), and has nothing to free among them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run(params, check_mode, want_diff):
    with _collector_paused():
        return _run(params, check_mode, want_diff)


def _run(params, check_mode, want_diff):
    state = params["state"]
    pin_path = params["pin_path"]

    if state == "rendered":
        document = desired_document("overridden", copy.deepcopy(EMPTY), params)
        policy, canonical = normalize(document)
        compiled = _compiler.compile_policy(policy, 0)
        return {"changed": False, "after": canonical, "rendered": _entries_view(compiled),
                "entry_changes": dict((name, {"added": len(compiled.packed[name]),
                                              "removed": 0, "changed": 0,
                                              "entries": len(compiled.packed[name])})
                                      for name in _converge.POLICY_MAPS)}

    if not os.path.exists(os.path.join(pin_path, "config_map")):
        if check_mode and state not in ("gathered", "deleted"):
            return _predict_on_empty(params, state, want_diff)
        raise PolicyInputError("no microseg program under %s: run "
                               "ebpf.microseg.microseg_program first" % pin_path)

    with _converge.HostLock(pin_path):
        with _maps.PinnedMaps(pin_path, names=list(_converge.POLICY_MAPS) + ["config_map"]) \
                as pinned:
            current = _converge.gather(pinned, pin_path)
            held = dict(current["source"]) if current["source"] else copy.deepcopy(EMPTY)
            held["default_action"] = current["default_action"]
            held.setdefault("segments", {})
            before = {"rules": held["rules"], "segments": held["segments"],
                      "default_action": held["default_action"]}
            if state == "gathered":
                return {"changed": False, "before": before, "after": before,
                        "gathered": before, "generation": current["generation"]}

            document = desired_document(state, held, params)
            digest = input_digest(document)
            active = current["active_set"]
            new_set = active ^ 1
            stale = sum(current["counts"][new_set].values())
            intact = current["source"] is not None and not stale and \
                current["source"].get("entry_counts") == current["counts"][active]
            unchanged = {"changed": False, "before": before, "after": before,
                         "entry_changes": dict((name, {"added": 0, "removed": 0, "changed": 0,
                                                       "entries": count})
                                               for name, count in current["counts"][active].items()),
                         "stale_entries_removed": 0, "generation": current["generation"]}
            if intact and current["source"].get("input_digest") == digest and \
                    before["default_action"] == document["default_action"]:
                # The very input that produced the active set, which still holds what was
                # written for it: no normalize, no compile, no write.
                return unchanged
            policy, after = normalize(document)
            if intact and _normalized_equal(before, after) and \
                    before["default_action"] == after["default_action"]:
                unchanged["after"] = after
                return unchanged
            compiled = _compiler.compile_policy(policy, new_set)
            active_entries = dict((name, current["entries"][name][active])
                                  for name in _converge.POLICY_MAPS)
            changes = _converge.entry_changes(active_entries, compiled)
            intact = all(changes[n]["added"] == changes[n]["removed"] == changes[n]["changed"]
                         == 0 for n in changes)
            same_source = current["source"] is not None and \
                _normalized_equal(before, after)
            switch_needed = not (intact and same_source and
                                 before["default_action"] == after["default_action"])
            result = {"changed": switch_needed or stale > 0, "before": before, "after": after,
                      "entry_changes": changes, "stale_entries_removed": stale,
                      "generation": current["generation"] + (1 if switch_needed else 0)}
            if want_diff:
                result["diff"] = {"before": before, "after": after}
            if check_mode or not result["changed"]:
                return result
            if not switch_needed:
                # A run killed before its switch left a half-written inactive set.
                _converge.clear_set(pinned, current["entries"], new_set)
                return result

            problems = _converge.capacity_problems(current, compiled)
            if problems:
                raise PolicyInputError("policy does not fit: " + "; ".join(problems))
            try:
                source_chunks = _converge.encode_source(dict(after,
                                                             entry_counts=compiled.counts(),
                                                             input_digest=digest))
            except _converge.ConvergeError as exc:
                raise PolicyInputError(str(exc))

            # The inactive set may hold a half-written policy from a run that was killed.
            _converge.clear_set(pinned, current["entries"], new_set)
            _converge.write_set(pinned, compiled)
            _converge.write_source(pin_path, new_set, source_chunks)
            _converge.switch(pinned, current["generation"] + 1, after["default_action"])
            _converge.clear_set(pinned, current["entries"], active)
            return result


def _predict_on_empty(params, state, want_diff):
    """Check mode before the program exists (a first --check of a whole play): predict the
    converge against the empty data plane that microseg_program is about to create."""
    held = copy.deepcopy(EMPTY)
    before = copy.deepcopy(EMPTY)
    policy, after = normalize(desired_document(state, held, params))
    compiled = _compiler.compile_policy(policy, 1)
    result = {"changed": True, "before": before, "after": after, "generation": 1,
              "stale_entries_removed": 0,
              "entry_changes": dict((name, {"added": len(compiled.packed[name]), "removed": 0,
                                            "changed": 0, "entries": len(compiled.packed[name])})
                                    for name in _converge.POLICY_MAPS),
              "warnings": ["no microseg program under %s yet: predicted against the empty "
                           "data plane microseg_program creates" % params["pin_path"]]}
    if want_diff:
        result["diff"] = {"before": before, "after": after}
    return result


def input_digest(document):
    """Identity of the desired document as given, before normalization.

    Keys are not sorted: it only has to be equal for the same input, which keeps its order
    from run to run, and sorting 110,000 rules doubles the cost. The same rules written in
    another key order only miss the fast path (and are found unchanged after normalizing).
    """
    text = json.dumps(document, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalized_equal(before, after):
    """The held source went through the same normalization when it was written."""
    return before["rules"] == after["rules"] and before["segments"] == after["segments"]

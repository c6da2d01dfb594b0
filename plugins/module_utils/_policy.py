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
from ansible_collections.ebpf.microseg.plugins.module_utils import _difference
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_text
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state

EMPTY = {"rules": [], "segments": {}, "default_action": {"egress": "allow", "ingress": "allow"}}


class PolicyInputError(Exception):
    """Bad input or a host that cannot take the policy; nothing was written.

    errors: one line per problem (at most _policy_model.MAX_SHOWN, then "and N more"),
    or None for a problem that is not about the policy's content.
    """

    def __init__(self, message, errors=None):
        super(PolicyInputError, self).__init__(message)
        self.errors = errors


def refused(error):
    """PolicyInputError from a PolicyError holding every problem of the run."""
    lines = error.lines()
    if len(error.errors) == 1:
        return PolicyInputError("%s (nothing was changed)" % lines[0], lines)
    return PolicyInputError("%d errors in the policy, nothing was changed: %s"
                            % (len(error.errors), "; ".join(lines)), lines)


def source_positions(rule_sources, count):
    """position_of(index) for messages: ``rules[7]``, or with rule_sources (how the list was
    put together, [{name, count}]) ``microseg_host_rules[0]``."""
    if not rule_sources:
        return _rules_position
    starts = []
    total = 0
    for number, source in enumerate(rule_sources):
        name = source.get("name") if isinstance(source, dict) else None
        size = source.get("count") if isinstance(source, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise PolicyInputError("rule_sources[%d]: name must be a non-empty string, not %s"
                                   % (number, _policy_model.short_repr(name)))
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise PolicyInputError("rule_sources[%d] (%s): count must be a whole number 0 or "
                                   "more, not %s" % (number, name,
                                                     _policy_model.short_repr(size)))
        starts.append((total, name.strip()))
        total += size
    if total != count:
        raise PolicyInputError("rule_sources: the counts add up to %d but rules has %d; they "
                               "must describe how rules was put together (%s)"
                               % (total, count, " + ".join(
                                   "%s (%d)" % (n, s.get("count")) for (_t, n), s
                                   in zip(starts, rule_sources))))

    def position_of(index):
        if index is None:
            return None
        for start, name in reversed(starts):
            if index >= start:
                return "%s[%d]" % (name, index - start)
        return _rules_position(index)
    return position_of


def _rules_position(index):
    return None if index is None else "rules[%d]" % index


def _strip_none(rule):
    return dict((k, v) for k, v in rule.items() if v is not None) if isinstance(rule, dict) \
        else rule


def desired_document(state, current, params):
    """(document, position_of, problems) for this run.

    document: the full policy document the host should hold after this run.
    position_of(i): how messages name rule i of the document - where it is in the input
    (``rules[3]``, or after rule_sources ``microseg_host_rules[0]``), or that the host holds
    it. problems: PolicyErrors found in the input before the document could hold it (rules
    without a usable name, the same name twice); normalize() finds the others.
    """
    rules = params["rules"] or []
    where = source_positions(params.get("rule_sources"), len(rules))
    # Rules are only replaced or updated at the top level: the held dicts are not changed
    # in place (merged copies before updating), so no copies are needed here.
    order = [r["name"] for r in current["rules"]]
    held = dict((r["name"], r) for r in current["rules"])
    segments = dict(current["segments"])
    default_action = dict(current["default_action"])
    tiers = list(current.get("tiers") or [])
    if params.get("tiers") is not None and state != "deleted":
        tiers = list(params["tiers"])
    problems = []

    if state == "overridden":
        # Kept as given, nameless and repeated rules too: normalize() names every problem.
        document_rules = [_strip_none(r) for r in rules]
        position_of = where
        if params["segments"] is not None:
            segments = dict(params["segments"])
    else:
        given = {}
        for index, rule in enumerate(rules):
            name = _policy_model.usable_name(rule)
            if name is None:
                problem = _policy_model.name_problem(rule, where(index))
            elif name in given and state != "deleted":
                problem = _policy_model.PolicyError(
                    name, "name", "the same name as %s (names must be unique)"
                    % where(given[name]), position=where(index))
            else:
                given[name] = index
                continue
            problems.append(problem)
        held_count = len(order)     # order: the held rules first, then the new ones
        if state in ("merged", "replaced"):
            for name, index in given.items():
                rule = _strip_none(rules[index])
                rule["name"] = name
                if state == "merged" and name in held:
                    merged = dict(held[name])
                    merged.update(rule)
                    held[name] = merged
                else:
                    if name not in held:
                        order.append(name)
                    held[name] = rule
            segments.update(params["segments"] or {})
        elif state == "deleted":
            # Deleting a rule the host does not hold is not an error: it is already gone.
            order = [n for n in order if n not in given] if rules else []
        document_rules = [held[name] for name in order]

        def position_of(index):
            origin = given.get(order[index])
            if origin is None:
                return "held on the host"
            if state == "merged" and index < held_count:
                return "%s, merged into the rule the host holds" % where(origin)
            return where(origin)
    if params.get("default_action"):
        for direction in ("egress", "ingress"):
            if params["default_action"].get(direction):
                default_action[direction] = params["default_action"][direction]
    document = {"rules": document_rules, "segments": segments,
                "default_action": default_action}
    if tiers:       # only tiered policies carry the key: the others read as before
        document["tiers"] = tiers
    return document, position_of, problems


def normalize(document, position_of=None, problems=(), previous_ids=None):
    """(Policy, canonical document); PolicyInputError with problems and every other one.

    previous_ids: the {name: policy id} table the host holds (see previous_rule_ids).
    """
    try:
        policy = _policy_model.normalize(document["rules"], document["segments"],
                                         document["default_action"], position_of,
                                         previous_ids, tiers=document.get("tiers"))
    except _policy_model.PolicyError as exc:
        raise refused(_policy_model.PolicyError.combine(list(problems) + exc.errors))
    if problems:
        raise refused(_policy_model.PolicyError.combine(list(problems)))
    canonical = {"rules": policy.to_rules(), "segments": _canonical_segments(document),
                 "default_action": dict(document["default_action"])}
    if policy.tiers:
        canonical["tiers"] = list(policy.tiers)
    return policy, canonical


def previous_rule_ids(source, params):
    """The {name: policy id} table the rules' ids are kept from, or None for none.

    The one stored with the active set's source beside the maps; when the maps hold none
    (bpffs after a reboot), the one the boot restore's record holds (passed by the restore,
    or read from state_dir), so that a rule keeps its id across a reboot too.
    """
    table = _converge.source_rule_ids(source)
    if table is not None:
        return table
    table = params.get("_restored_ids")
    if table is None and params.get("state_dir"):
        try:
            record = _saved_state.policy_saved(params["state_dir"], params["pin_path"])
        except (_saved_state.SavedStateError, IOError, OSError):
            record = None
        table = (record or {}).get("rule_ids")
    return table if isinstance(table, dict) else None


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
        return _rendered(params)
    if state == "parsed":
        return parsed(params["running_config"])
    if not os.path.exists(os.path.join(pin_path, "config_map")):
        if state == "gathered":
            # Nothing converged here: the empty policy, as a resource module gathers it.
            empty = copy.deepcopy(EMPTY)
            return {"changed": False, "before": empty, "after": empty, "gathered": empty,
                    "generation": 0, "running_config": _policy_text.format_lines(empty),
                    "warnings": ["no microseg program under %s: nothing is converged there "
                                 "(the empty policy is returned)" % pin_path]}
        if check_mode and state != "deleted":
            return _predict_on_empty(params, state, want_diff)
        raise PolicyInputError("no microseg program under %s: run "
                               "ebpf.microseg.microseg_program first" % pin_path)
    with _converge.HostLock(pin_path):
        with _maps.PinnedMaps(pin_path, names=list(_converge.POLICY_MAPS) + ["config_map"]) \
                as pinned:
            current = _converge.gather(pinned, pin_path)
            held, before = _held_document(current)
            if state == "gathered":
                return {"changed": False, "before": before, "after": before,
                        "gathered": before, "generation": current["generation"],
                        "running_config": _policy_text.format_lines(before)}
            converge_plan = plan_converge(params, current, held, before)
            result = converge_plan.result(want_diff)
            if not check_mode and converge_plan.writes:
                _apply_converge(pinned, pin_path, current, converge_plan)
            return _settle_record(params, check_mode, result, converge_plan.kernel_digest,
                                  converge_plan.rule_ids)


def _rendered(params):
    document, position_of, problems = desired_document("overridden", copy.deepcopy(EMPTY),
                                                       params)
    policy, canonical = normalize(document, position_of, problems)
    compiled = _compiler.compile_policy(policy, 0)
    return {"changed": False, "after": canonical, "rendered": _entries_view(compiled),
            "entry_changes": _all_added(compiled)}


def parsed(running_config):
    """state=parsed: the policy a text holds, checked as rules are, touching no host."""
    try:
        document, position_of, problems = _policy_text.read(running_config)
    except _policy_text.TextProblems as exc:
        raise refused(_policy_model.PolicyError.combine(exc.problems))
    _policy, canonical = normalize(document, position_of, problems)
    return {"changed": False, "parsed": canonical}


def _all_added(compiled):
    return dict((name, {"added": len(compiled.packed[name]), "removed": 0, "changed": 0,
                        "entries": len(compiled.packed[name])})
                for name in _converge.POLICY_MAPS)


def _held_document(current):
    """(the document the host holds, its user-facing view: `before`)."""
    held = dict(current["source"]) if current["source"] else copy.deepcopy(EMPTY)
    held["default_action"] = current["default_action"]
    held.setdefault("segments", {})
    before = {"rules": held["rules"], "segments": held["segments"],
              "default_action": held["default_action"]}
    if held.get("tiers"):
        before["tiers"] = list(held["tiers"])
    return held, before


class ConvergePlan:
    """What one converge does, decided before anything is written.

    `diff` tracks rules, segments, default actions (and tiers) before and after; `switch`
    says a new generation goes in; `clear_only` that only a half-written inactive set left
    by a killed run is removed. `writes` is whether a real run touches the maps at all.
    """

    def __init__(self, current, before):
        self.generation = current["generation"]
        self.active_set = current["active_set"]
        self.new_set = self.active_set ^ 1
        # Entries in the inactive set: what a run killed before its switch left.
        self.stale = sum(current["counts"][self.new_set].values())
        self.diff = _difference.DifferenceTracker()
        for facet, value in before.items():
            self.diff.add(facet, value, value)
        self.entry_changes = dict(
            (name, {"added": 0, "removed": 0, "changed": 0, "entries": count})
            for name, count in current["counts"][self.active_set].items())
        self.switch = False
        self.compiled = None
        self.digest = None
        self.kernel_digest = None
        self.rule_ids = None
        self.previous_ids = None

    def set_after(self, after):
        for facet in set(self.diff.before) | set(after):
            if facet not in self.diff:
                self.diff.add(facet, None, after[facet])
            else:
                self.diff.set_after(facet, after.get(facet))

    @property
    def writes(self):
        return self.switch or self.stale > 0

    @property
    def after(self):
        """The document after the run (a facet only one side has is left out of the other)."""
        return dict((k, v) for k, v in self.diff.after.items() if v is not None)

    def result(self, want_diff):
        after = self.after
        before = dict((k, v) for k, v in self.diff.before.items() if v is not None)
        out = {"changed": self.writes, "before": before, "after": after,
               "entry_changes": self.entry_changes, "stale_entries_removed": self.stale,
               "generation": self.generation + (1 if self.switch else 0)}
        if want_diff and self.compiled is not None:
            out["diff"] = {"before": before, "after": after}
        return out


def plan_converge(params, current, held, before):
    """Compare the desired document with what the host holds; compile only if it differs.

    Three exits, cheapest first: the very input that produced the active set (no
    normalize); the same normalized policy (no compile); otherwise compile and count what
    moves, switching only if an entry or the source differs.
    """
    out = ConvergePlan(current, before)
    out.previous_ids = previous_rule_ids(current["source"], params)
    document, position_of, problems = desired_document(params["state"], held, params)
    if problems:
        normalize(document, position_of, problems)      # raises, with every problem
    # The boot restore converges the saved (normalized) policy under the digest of the
    # input it was saved for, so the next Ansible run with that input is a no-op.
    out.digest = params.get("_restored_digest") or input_digest(document)
    source = current["source"]
    held_digest = source.get("input_digest") if source else None
    out.kernel_digest = held_digest
    # The active set still holds what was written for it, and nothing half-written waits.
    active_as_written = source is not None and not out.stale and \
        source.get("entry_counts") == current["counts"][out.active_set]
    same_defaults = before["default_action"] == document["default_action"]
    # Both early exits need active_as_written, so no stale entries wait: nothing to write.
    if active_as_written and held_digest == out.digest and same_defaults:
        out.rule_ids = out.previous_ids
        return out
    policy, after = normalize(document, position_of, previous_ids=out.previous_ids)
    out.rule_ids = policy.rule_ids
    out.set_after(after)
    if active_as_written and _normalized_equal(before, after) and same_defaults:
        return out
    out.compiled = _compiler.compile_policy(policy, out.new_set)
    active_entries = dict((name, current["entries"][name][out.active_set])
                          for name in _converge.POLICY_MAPS)
    out.entry_changes = _converge.entry_changes(active_entries, out.compiled)
    entries_equal = all(c["added"] == c["removed"] == c["changed"] == 0
                        for c in out.entry_changes.values())
    same_source = source is not None and _normalized_equal(before, after)
    out.switch = not (entries_equal and same_source and
                      before["default_action"] == after["default_action"])
    if out.switch:
        out.kernel_digest = out.digest
    return out


def _apply_converge(pinned, pin_path, current, converge_plan):
    if not converge_plan.switch:
        # A run killed before its switch left a half-written inactive set.
        _converge.clear_set(pinned, current["entries"], converge_plan.new_set)
        return
    compiled = converge_plan.compiled
    problems = _converge.capacity_problems(current, compiled)
    if problems:
        raise PolicyInputError("policy does not fit: " + "; ".join(problems))
    after = converge_plan.after
    try:
        source_chunks = _converge.encode_source(dict(after, entry_counts=compiled.counts(),
                                                     input_digest=converge_plan.digest,
                                                     rule_ids=converge_plan.rule_ids))
    except _converge.ConvergeError as exc:
        raise PolicyInputError(str(exc))
    # The inactive set may hold a half-written policy from a run that was killed.
    _converge.clear_set(pinned, current["entries"], converge_plan.new_set)
    # A rule that takes an id another rule held (freed since) starts from zero hits:
    # counters left by the old owner go now (a run killed after the switch would leave
    # them), and those it counted until the switch go right after it.
    fresh = _converge.fresh_ids(converge_plan.previous_ids, converge_plan.rule_ids)
    _converge.reset_rule_stats(pin_path, fresh)
    _converge.write_set(pinned, compiled)
    _converge.write_source(pin_path, converge_plan.new_set, source_chunks)
    _converge.switch(pinned, converge_plan.generation + 1, after["default_action"])
    _converge.reset_rule_stats(pin_path, fresh)
    _converge.clear_set(pinned, current["entries"], converge_plan.active_set)


def _settle_record(params, check_mode, result, kernel_digest, rule_ids):
    """Bring the boot restore's record (_saved_state.py) in line with what the kernel holds
    after this run (result["after"], with the policy ids rule_ids). Runs under the host
    lock, so two converges cannot leave the record of the one that lost the race. A missing
    or stale record is a change."""
    state_dir, pin_path = params.get("state_dir"), params["pin_path"]
    if not state_dir:
        return result
    if kernel_digest and _saved_state.saved_policy_digest(state_dir, pin_path) == kernel_digest:
        return result
    result["changed"] = True
    result["saved_state"] = _saved_state.instance_dir(state_dir, pin_path)
    if not check_mode:
        _saved_state.save_policy(state_dir, pin_path, _saved_state.policy_record(
            result["after"], kernel_digest, result["generation"], rule_ids))
    return result


def _predict_on_empty(params, state, want_diff):
    """Check mode before the program exists (a first --check of a whole play): predict the
    converge against the empty data plane that microseg_program is about to create."""
    held = copy.deepcopy(EMPTY)
    before = copy.deepcopy(EMPTY)
    document, position_of, problems = desired_document(state, held, params)
    # The ids the real run assigns: from the boot restore's record if there is one.
    policy, after = normalize(document, position_of, problems,
                              previous_rule_ids(None, params))
    compiled = _compiler.compile_policy(policy, 1)
    result = {"changed": True, "before": before, "after": after, "generation": 1,
              "stale_entries_removed": 0,
              "entry_changes": dict((name, {"added": len(compiled.packed[name]), "removed": 0,
                                            "changed": 0, "entries": len(compiled.packed[name])})
                                    for name in _converge.POLICY_MAPS),
              "warnings": ["no microseg program under %s yet: predicted against the empty "
                           "data plane microseg_program creates" % params["pin_path"]]}
    if params.get("state_dir"):
        result["saved_state"] = _saved_state.instance_dir(params["state_dir"], params["pin_path"])
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
    return before["rules"] == after["rules"] and before["segments"] == after["segments"] and \
        before.get("tiers", []) == after.get("tiers", [])

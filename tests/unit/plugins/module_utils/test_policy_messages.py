# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""What an operator reads when a policy is refused (issue 23).

Every problem of a run at once, each naming the rule by name and 0-based position (in the
variable it was written in, with rule_sources), the field, the item and the bad value; wrong
types anywhere give such a message, never a Python exception.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import copy
import math

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model as M
from ansible_collections.ebpf.microseg.plugins.module_utils._policy_model import (
    PolicyError, normalize)

SEGMENTS = {"web": ["198.18.1.0/24"], "db": ["198.18.2.10/32"]}
GOOD = {"name": "web-to-db", "direction": "egress", "src": ["web"], "dst": ["db"],
        "protocol": "tcp", "dst_ports": [5432], "action": "allow"}


def problems(rules, segments=None, default_action=None, position_of=None):
    with pytest.raises(PolicyError) as info:
        normalize(rules, SEGMENTS if segments is None else segments, default_action,
                  position_of)
    return info.value


def lines(rules, **kwargs):
    return [e.describe() for e in problems(rules, **kwargs).errors]


def rule(**fields):
    out = dict(GOOD)
    out.update(fields)
    return dict((k, v) for k, v in out.items() if v is not None)


# -- every problem at once, 0-based ---------------------------------------------------------

def test_every_problem_of_every_rule_is_reported_at_once():
    rules = [rule(name="ok"),
             rule(name="a", protocol="sctp", dst=["nosuch", "198.18.300.1"], action="permit"),
             rule(name="b", dst_ports=[70000, "90-80", "http"]),
             {"direction": "egress", "action": "allow"}]
    exc = problems(rules, segments=dict(SEGMENTS, bad=["10.0.0.1/8"]))
    assert [(e.position, e.field, e.item) for e in exc.errors] == [
        (None, "segments.bad", 0),
        ("rules[1]", "action", None), ("rules[1]", "protocol", None),
        ("rules[1]", "dst", 0), ("rules[1]", "dst", 1),
        ("rules[2]", "dst_ports", 0), ("rules[2]", "dst_ports", 1),
        ("rules[2]", "dst_ports", 2),
        ("rules[3]", "name", None)]
    text = str(exc)
    assert text.startswith("9 errors: segments.bad[0] '10.0.0.1/8': host bits are set")
    for needle in ("rule 'a' (rules[1]): action 'permit': must be allow, deny or log",
                   "rule 'a' (rules[1]): protocol 'sctp': must be tcp, udp, icmp, any",
                   "rule 'a' (rules[1]): dst[0] 'nosuch': unknown segment (known: bad, db, web)",
                   "rule 'a' (rules[1]): dst[1] '198.18.300.1': not an IPv4 address",
                   "rule 'b' (rules[2]): dst_ports[0] 70000: port 70000 is out of range",
                   "rule 'b' (rules[2]): dst_ports[1] '90-80': range 90-80 is backwards",
                   "rule 'b' (rules[2]): dst_ports[2] 'http': not a port",
                   "rule rules[3]: name: is required (a non-empty string)"):
        assert needle in text, text
    # The first problem is also the error's own fields (callers that look at one).
    assert (exc.rule, exc.field, exc.item) == (None, "segments.bad", 0)


def test_a_rule_that_references_a_refused_segment_is_not_reported_again():
    exc = problems([rule(name="x", dst=["bad"])], segments={"web": ["198.18.1.0/24"],
                                                            "bad": ["nonsense"]})
    assert [e.field for e in exc.errors] == ["segments.bad"]


def test_positions_and_items_count_from_zero_everywhere():
    rules = [rule(name="r%d" % i) for i in range(5)]
    rules[3] = rule(name="r3", src=["web", "db", "10.0.0.1/8"])
    rules.append(rule(name="r1"))
    exc = problems(rules)
    assert [e.describe() for e in exc.errors] == [
        "rule 'r3' (rules[3]): src[2] '10.0.0.1/8': host bits are set "
        "(did you mean 10.0.0.0/8?)",
        "rule 'r1' (rules[5]): name: the same name as rules[1] (names must be unique)"]


def test_the_message_is_bounded():
    exc = problems([{"name": "r%d" % i} for i in range(45)])
    assert len(exc.errors) == 45
    shown = exc.lines()
    assert len(shown) == M.MAX_SHOWN + 1 and shown[-1] == "and 25 more"
    assert str(exc).startswith("45 errors: rule 'r0' (rules[0]): action: is required")
    assert str(exc).endswith("; and 25 more")


def test_a_long_bad_value_is_shown_short():
    exc = problems([rule(dst_ports=["x" * 5000] + list(range(100)))])
    assert len(exc.errors) == 1 and len(str(exc)) < 250, str(exc)


# -- the messages of issue 23 ------------------------------------------------------------

def test_duplicate_names_name_both_positions_from_zero():
    exc = problems([rule(name="a"), rule(name="b"), rule(name="a", action="deny")])
    assert str(exc) == ("rule 'a' (rules[2]): name: the same name as rules[0] (names must be "
                        "unique)")


def test_a_port_with_its_protocol_names_the_string_and_the_fix():
    got = lines([{"name": "web-to-db", "dst_ports": ["5432/tcp"], "action": "allow"}])
    assert got == [
        "rule 'web-to-db' (rules[0]): dst_ports ['5432/tcp']: ports need protocol tcp or "
        "udp, not any",
        "rule 'web-to-db' (rules[0]): dst_ports[0] '5432/tcp': not a port or a low-high range "
        "(the protocol goes in its own field - protocol tcp, dst_ports [5432])"]
    assert lines([rule(src_ports=["1024-2048/UDP"])])[0].endswith(
        "(the protocol goes in its own field - protocol udp, src_ports [1024-2048])")


@pytest.mark.parametrize("fields,shown", [
    ({"dst_ports": ["5432/tcp"]}, "dst_ports[0] '5432/tcp'"),
    ({"dst_ports": [80, 70000]}, "dst_ports[1] 70000"),
    ({"src_ports": "9-1"}, "src_ports '9-1'"),
    ({"protocol": "sctp"}, "protocol 'sctp'"),
    ({"protocol": 300}, "protocol 300"),
    ({"protocol": "icmp"}, "dst_ports [5432]: ports need protocol tcp or udp, not icmp"),
    ({"dst": "198.18.2.0/33"}, "dst '198.18.2.0/33'"),
    ({"src": ["web", "10.1.1.1/16"]}, "src[1] '10.1.1.1/16'"),
    ({"src": ["2001:db8::/32"]}, "src[0] '2001:db8::/32'"),
    ({"dst": ["db", "dbs"]}, "dst[1] 'dbs': unknown segment, did you mean db?"),
    ({"direction": "out"}, "direction 'out'"),
    ({"action": "accept"}, "action 'accept'"),
])
def test_the_bad_value_is_in_the_message(fields, shown):
    text = str(problems([rule(**fields)]))
    assert text.startswith("rule 'web-to-db' (rules[0]): "), text
    assert shown in text, text


@pytest.mark.parametrize("segments,shown", [
    ({"web": ["198.18.1.0/24", "198.18.1.300/32"]}, "segments.web[1] '198.18.1.300/32'"),
    ({"web": "198.18.1.1/24"}, "segments.web '198.18.1.1/24': host bits are set"),
    ({"web": [17]}, "segments.web[0] 17: not a CIDR (got a number)"),
    ({"web": {"a": 1}}, "segments.web {'a': 1}: must be a non-empty list of CIDRs"),
])
def test_the_bad_segment_value_is_in_the_message(segments, shown):
    assert shown in str(problems([], segments=segments))


@pytest.mark.parametrize("name,shown", [
    (["a", "b"], "rule rules[0]: name ['a', 'b']: must be a non-empty string (got a list)"),
    ({"a": 1}, "rule rules[0]: name {'a': 1}: must be a non-empty string (got a mapping)"),
    (7, "rule rules[0]: name 7: must be a non-empty string (got a number)"),
    (True, "rule rules[0]: name True: must be a non-empty string (got a boolean)"),
    ("  ", "rule rules[0]: name '  ': must be a non-empty string"),
])
def test_a_name_of_the_wrong_type_is_a_message(name, shown):
    assert lines([rule(name=name)]) == [shown]


def test_a_rule_that_is_not_a_mapping():
    assert lines(["web-to-db", ["a"]]) == [
        "rules[0] 'web-to-db': a rule must be a mapping of its fields (name, direction, src, "
        "dst, protocol, dst_ports, src_ports, action, tier), got a string",
        "rules[1] ['a']: a rule must be a mapping of its fields (name, direction, src, dst, "
        "protocol, dst_ports, src_ports, action, tier), got a list"]


def test_unknown_fields_suggest_the_known_one():
    assert lines([rule(dport=5432, proto="tcp")]) == [
        "rule 'web-to-db' (rules[0]): dport: unknown rule field, did you mean dst_ports? "
        "(known: name, direction, src, dst, protocol, dst_ports, src_ports, action, tier)",
        "rule 'web-to-db' (rules[0]): proto: unknown rule field, did you mean protocol? "
        "(known: name, direction, src, dst, protocol, dst_ports, src_ports, action, tier)"]


def test_conflicts_name_the_other_rule_by_position():
    got = lines([rule(name="one"), rule(name="two", action="deny")])
    assert got == ["rule 'two' (rules[1]): action 'deny': conflicts with rule 'one' "
                   "(rules[0]) - both match the same egress traffic, one says allow, the "
                   "other deny"]
    # Names whose crc32 is the same are no problem: they get distinct ids.
    assert M.policy_id_for("rule-3985819") == M.policy_id_for("rule-4420602")
    policy = normalize([rule(name="rule-3985819"), rule(name="x", dst_ports=[1]),
                        rule(name="rule-4420602", dst_ports=[2])], SEGMENTS, None)
    assert len(set(policy.rule_ids.values())) == 3


def test_position_of_names_where_the_rule_was_written():
    exc = problems([rule(name="a"), {"action": "allow"}],
                   position_of=lambda index: "microseg_host_rules[%d]" % (index + 5))
    assert str(exc) == "rule microseg_host_rules[6]: name: is required (a non-empty string)"


# -- wrong types never raise anything but PolicyError --------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) |
           st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) |
           st.sampled_from(["tcp", "udp", "any", "icmp", "6", "web", "db", "any", "both",
                            "egress", "allow", "deny", "log", "80", "80-90", "5432/tcp",
                            "198.18.1.0/24", "198.18.1.5", "10.0.0.1/8", "::1", "\u00b2",
                            "\u0663", "1.2.3.4\x00", " 22 ", "0.0.0.0/0"]))
JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4) |
                    st.dictionaries(st.text(max_size=8) | st.sampled_from(M.RULE_KEYS),
                                    children, max_size=4), max_leaves=10)


def _check(call):
    """call() returns or raises PolicyError whose every line reads as a message."""
    try:
        return call()
    except PolicyError as exc:
        assert exc.errors
        for error in exc.errors:
            text = error.describe()
            assert text and ": " in text and "Traceback" not in text
        str(exc)
        return exc


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(M.RULE_KEYS), JSON)
def test_any_value_in_any_field_gives_a_message(field, value):
    raw = rule(**{field: None})
    raw[field] = value
    outcome = _check(lambda: normalize([rule(name="other", dst_ports=[1]), raw], SEGMENTS,
                                       None))
    if isinstance(outcome, PolicyError):
        fields = [e.field for e in outcome.errors]
        assert field in fields or (field == "protocol" and
                                   set(fields) <= set(["dst_ports", "src_ports"])), fields
        if field == "name" and M.usable_name(raw) is None:
            assert all(e.rule is None and e.position == "rules[1]" for e in outcome.errors)


@settings(max_examples=400, deadline=None)
@given(st.lists(JSON | st.dictionaries(st.sampled_from(M.RULE_KEYS), JSON, max_size=8),
                max_size=4),
       JSON | st.dictionaries(st.text(max_size=6), JSON, max_size=3),
       JSON | st.dictionaries(st.sampled_from(["egress", "ingress", "x"]), JSON, max_size=3))
def test_any_policy_document_gives_a_policy_or_messages(rules, segments, default_action):
    _check(lambda: normalize(rules, segments, default_action))


HELD = {"rules": [{"name": "held", "direction": "both", "protocol": "any", "action": "allow"},
                  {"name": "web-to-db", "src": ["web"], "dst": ["db"], "protocol": "tcp",
                   "dst_ports": [5432], "action": "allow"}],
        "segments": dict(SEGMENTS), "default_action": {"egress": "deny", "ingress": "deny"}}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["merged", "replaced", "overridden", "deleted"]),
       st.lists(JSON | st.dictionaries(st.sampled_from(M.RULE_KEYS), JSON, max_size=8),
                max_size=4))
def test_any_rules_in_any_state_give_a_document_or_messages(state, rules):
    params = {"rules": rules, "segments": None, "default_action": None, "state": state}
    try:
        document, position_of, found = _policy.desired_document(state, copy.deepcopy(HELD),
                                                                params)
        _policy.normalize(document, position_of, found)
    except _policy.PolicyInputError as exc:
        assert exc.errors and str(exc)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_short_repr_and_kind_take_anything(value):
    assert len(M.short_repr(value)) <= 80
    assert M.kind(value)


def test_non_finite_numbers_are_messages_too():
    for value in (float("nan"), float("inf"), -math.inf):
        for field in ("protocol", "dst_ports", "dst", "action", "name"):
            _check(lambda: normalize([rule(**{field: value})], SEGMENTS, None))


# -- through the module's code: rule_sources and every state ------------------------------

SOURCES = [{"name": "microseg_rules", "count": 5}, {"name": "microseg_group_rules", "count": 2},
           {"name": "microseg_host_rules", "count": 1}]


def render(rules, rule_sources=None, segments=None):
    params = {"rules": rules, "segments": SEGMENTS if segments is None else segments,
              "default_action": None, "state": "rendered", "pin_path": "/nonexistent",
              "rule_sources": rule_sources}
    return _policy.run(params, False, False)


def refusal(call):
    with pytest.raises(_policy.PolicyInputError) as info:
        call()
    return info.value


def test_rule_sources_turn_rules_7_into_microseg_host_rules_0():
    rules = [rule(name="r%d" % i, dst_ports=[i + 1]) for i in range(7)]
    rules.append({"direction": "egress", "action": "allow"})
    assert str(refusal(lambda: render(rules))) == (
        "rule rules[7]: name: is required (a non-empty string) (nothing was changed)")
    exc = refusal(lambda: render(rules, SOURCES))
    assert exc.errors == ["rule microseg_host_rules[0]: name: is required (a non-empty string)"]
    assert str(exc) == ("rule microseg_host_rules[0]: name: is required (a non-empty string) "
                        "(nothing was changed)")


def test_rule_sources_in_every_message_and_an_empty_source_is_skipped():
    sources = [{"name": "microseg_rules", "count": 2}, {"name": "microseg_group_rules",
                                                        "count": 0},
               {"name": "microseg_host_rules", "count": 2}]
    rules = [rule(name="a"), rule(name="b", dst_ports=[2]), rule(name="a", dst_ports=[3]),
             rule(name="c", dst_ports=["5432/tcp"])]
    exc = refusal(lambda: render(rules, sources))
    assert exc.errors == [
        "rule 'a' (microseg_host_rules[0]): name: the same name as microseg_rules[0] (names "
        "must be unique)",
        "rule 'c' (microseg_host_rules[1]): dst_ports[0] '5432/tcp': not a port or a low-high "
        "range (the protocol goes in its own field - protocol tcp, dst_ports [5432])"]
    assert str(exc).startswith("2 errors in the policy, nothing was changed: rule 'a' "
                               "(microseg_host_rules[0]): ")


@pytest.mark.parametrize("sources,words", [
    ([{"name": "microseg_rules", "count": 2}], "add up to 2 but rules has 3"),
    ([{"name": "a", "count": 4}, {"name": "b", "count": -1}], "count must be a whole number"),
    ([{"name": "", "count": 3}], "name must be a non-empty string"),
    ([{"name": "a", "count": True}], "count must be a whole number"),
])
def test_rule_sources_that_do_not_describe_rules_are_refused(sources, words):
    rules = [rule(name="r%d" % i, dst_ports=[i + 1]) for i in range(3)]
    exc = refusal(lambda: render(rules, sources))
    assert "rule_sources" in str(exc) and words in str(exc), str(exc)


def test_rendered_with_good_rules_and_sources_renders():
    result = render([rule(name="r%d" % i, dst_ports=[i + 1]) for i in range(8)], SOURCES)
    assert result["changed"] is False and result["rendered"]["port_range_map"]


@pytest.mark.parametrize("state", ["merged", "replaced", "deleted"])
def test_states_by_name_report_nameless_and_repeated_rules_by_input_position(state):
    rules = [{"name": "x", "action": "allow"}, {"name": ["l"]}, {"action": "deny"},
             {"name": "x", "action": "deny"}, "str"]
    params = {"rules": rules, "segments": None, "default_action": None, "state": state,
              "rule_sources": [{"name": "microseg_rules", "count": 2},
                               {"name": "microseg_host_rules", "count": 3}]}
    document, position_of, found = _policy.desired_document(state, copy.deepcopy(HELD), params)
    got = [e.describe() for e in found]
    expected = [
        "rule microseg_rules[1]: name ['l']: must be a non-empty string (got a list)",
        "rule microseg_host_rules[0]: name: is required (a non-empty string)",
        "rule 'x' (microseg_host_rules[1]): name: the same name as microseg_rules[0] (names "
        "must be unique)",
        "microseg_host_rules[2] 'str': a rule must be a mapping of its fields (name, "
        "direction, src, dst, protocol, dst_ports, src_ports, action, tier), got a string"]
    if state == "deleted":      # naming a rule twice to delete it is harmless
        expected.pop(2)
    assert got == expected
    exc = refusal(lambda: _policy.normalize(document, position_of, found))
    assert exc.errors[:len(expected)] == expected


def test_merged_names_the_input_position_and_the_held_rule():
    params = {"rules": [{"name": "web-to-db", "protocol": "any"},
                        {"name": "new", "protocol": "udp", "dst_ports": [53],
                         "action": "deny"}],
              "segments": None, "default_action": None, "state": "merged"}
    document, position_of, found = _policy.desired_document("merged", copy.deepcopy(HELD),
                                                            params)
    assert not found
    exc = refusal(lambda: _policy.normalize(document, position_of))
    assert exc.errors == [
        "rule 'web-to-db' (rules[0], merged into the rule the host holds): dst_ports [5432]: "
        "ports need protocol tcp or udp, not any"]
    params["rules"] = [{"name": "held2", "protocol": "any", "action": "deny"}]
    document, position_of, found = _policy.desired_document("replaced", copy.deepcopy(HELD),
                                                            params)
    exc = refusal(lambda: _policy.normalize(document, position_of))
    assert exc.errors == [
        "rule 'held2' (rules[0]): action 'deny': conflicts with rule 'held' (held on the host) "
        "- both match the same egress traffic, one says allow, the other deny"]


def test_a_valid_overridden_document_is_what_it_was():
    """The document of valid input is unchanged, so the digest fast path still hits."""
    rules = [dict(rule(name="a"), src_ports=None), rule(name="b", dst_ports=[1])]
    params = {"rules": rules, "segments": SEGMENTS, "default_action": {"egress": "deny"},
              "state": "overridden"}
    document, _position_of, found = _policy.desired_document(
        "overridden", copy.deepcopy(_policy.EMPTY), params)
    assert not found
    assert document == {"rules": [rule(name="a"), rule(name="b", dst_ports=[1])],
                        "segments": SEGMENTS,
                        "default_action": {"egress": "deny", "ingress": "allow"}}

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Policy ids: distinct, never 0, kept by a name from converge to converge.

assign_policy_ids gives each name its crc32 (policy_id_for) unless the id is taken, then
the next free one up; a name the previous table has keeps its id. Adversarial names are
real crc32 collisions: found by a birthday search at test time, and built for a chosen id
(tests/harness/policy_names.py) for the probe's corner cases (chains, the wrap from 2**31-1
to 1); hypothesis also squeezes the preferred ids of arbitrary names into five.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import random
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model as M
from ansible_collections.ebpf.microseg.plugins.module_utils import _restore
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state
from ansible_collections.ebpf.microseg.plugins.module_utils._verdict import verdict
from ansible_collections.ebpf.microseg.tests.harness.policy_names import (
    birthday_pairs, name_with_id, names_with_id, random_names)
from ansible_collections.ebpf.microseg.tests.harness.policy_strategies import (
    build_policy, policy_and_packets)

MAX = M.POLICY_ID_MAX
# Found by search; test_known_collisions_really_collide checks them.
KNOWN = [("rule-3985819", "rule-4420602")]


def crc(name):
    return zlib.crc32(name.encode("utf-8")) & 0x7fffffff


PAIRS = KNOWN + birthday_pairs()
COLLIDING = sorted(set(name for pair in PAIRS for name in pair))


def check_table(names, ids):
    assert sorted(ids) == sorted(set(names))
    values = list(ids.values())
    assert len(set(values)) == len(values)
    assert all(v.__class__ is int and 0 < v <= MAX for v in values)


def test_known_collisions_really_collide():
    assert len(PAIRS) >= 2
    for one, other in PAIRS:
        assert one != other and crc(one) == crc(other) == M.policy_id_for(one)


def test_colliding_names_get_distinct_ids_the_first_sorted_keeping_its_crc32():
    for one, other in PAIRS:
        ids = M.assign_policy_ids([other, one])
        low, high = sorted((one, other))
        assert ids == {low: crc(low), high: M.next_policy_id(crc(low))}


def test_without_collisions_every_id_is_the_crc32_as_before_tables():
    names = ["web-to-db", "lab-dns", "web-ping-db"] + ["rule-%d" % i for i in range(2000)]
    assert M.assign_policy_ids(names) == dict((n, M.policy_id_for(n)) for n in names)


def test_the_probe_goes_up_and_wraps_past_0():
    assert M.next_policy_id(5) == 6
    assert M.next_policy_id(MAX) == 1


@pytest.mark.parametrize("target", [1, 2, 77, 1 << 30, MAX - 1, MAX])
def test_names_built_for_an_id_have_it(target):
    name = name_with_id(target)
    assert crc(name) == target == M.policy_id_for(name)


def test_a_probe_chain_skips_every_taken_id():
    k = crc("chain-start")
    first, second, third = sorted(names_with_id(k, 3))
    after = name_with_id(k + 1, "next")
    ids = M.assign_policy_ids([third, after, second, first])
    # sorted: app- < db- < next- < svc-; each crc k name probes past the ones before it
    order = sorted([first, second, third, after])
    assert order.index(after) < order.index(third)
    assert ids[first] == k and ids[second] == k + 1 and ids[after] == k + 2 and \
        ids[third] == k + 3
    check_table([first, second, third, after], ids)


def test_a_probe_from_the_last_id_wraps_to_1_never_0():
    one, other = sorted(names_with_id(MAX, 2))
    assert M.assign_policy_ids([other, one]) == {one: MAX, other: 1}
    holder = name_with_id(1, "aa")    # sorted first: it takes 1 before the probe can
    assert M.assign_policy_ids([other, one, holder]) == {one: MAX, holder: 1, other: 2}
    # A table holding 1 for another name pushes the wrapped probe on.
    assert M.assign_policy_ids([other, one], {"gone": 1, one: MAX}) == {one: MAX, other: 1}
    assert M.assign_policy_ids([other, one, "web"], {"web": 1}) == \
        {"web": 1, one: MAX, other: 2}


names_st = st.lists(st.text(min_size=1, max_size=6), max_size=30, unique=True)
colliding_st = st.lists(st.sampled_from(COLLIDING), unique=True, max_size=len(COLLIDING))


@settings(max_examples=300, deadline=None)
@given(names_st, colliding_st, st.randoms(use_true_random=False))
def test_any_names_get_distinct_nonzero_ids_whatever_their_order(names, colliding, rnd):
    names = list(set(names + colliding))
    ids = M.assign_policy_ids(names)
    check_table(names, ids)
    rnd.shuffle(names)
    assert M.assign_policy_ids(names) == ids      # no table: the set decides, not the order


@settings(max_examples=300, deadline=None)
@given(names_st, colliding_st, st.data())
def test_renaming_adding_and_removing_keeps_the_ids_of_untouched_names(
        names, colliding, data):
    before = list(set(names + colliding))
    old = M.assign_policy_ids(before)
    some = st.lists(st.sampled_from(before), unique=True) if before else st.just([])
    removed = set(data.draw(some))
    added = data.draw(st.lists(st.sampled_from(COLLIDING) | st.text(min_size=1, max_size=6),
                               unique=True))
    renamed = dict((name, name + "-renamed") for name in data.draw(some)[:3])
    after = [renamed.get(n, n) for n in before if n not in removed]
    after = list(set(after + added))
    new = M.assign_policy_ids(after, old)
    check_table(after, new)
    for name in after:
        if name in old:
            assert new[name] == old[name], name
    # Converging the same names again changes nothing; a free crc32 is still taken as is.
    assert M.assign_policy_ids(after, new) == new
    taken = set(new[n] for n in after if n in old)
    for name in after:
        if name not in old and M.policy_id_for(name) not in taken and \
                not any(M.policy_id_for(o) == M.policy_id_for(name) and o < name
                        for o in after if o not in old):
            assert new[name] == M.policy_id_for(name), name


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=12, unique=True),
       st.dictionaries(st.text(min_size=1, max_size=4),
                       st.sampled_from([1, 2, 3, MAX - 1, MAX])),
       st.dictionaries(st.text(min_size=1, max_size=4),
                       st.sampled_from([0, -1, MAX + 1, 2, True, "3", None, 2.0, MAX])),
       st.data())
def test_probe_chains_and_wrap_with_ids_squeezed_into_five(names, prefer, garbage, data):
    """Every name asks for one of five ids (1, 2, 3, MAX-1, MAX): chains of probes, the wrap
    past MAX, previous tables holding duplicates and values that are not ids."""
    previous = dict(garbage)
    previous.update(data.draw(st.dictionaries(st.sampled_from(names),
                                              st.sampled_from([1, 2, 3, MAX - 1, MAX]))))
    original = M.policy_id_for
    M.policy_id_for = lambda name: prefer.get(name, MAX)
    try:
        ids = M.assign_policy_ids(names, previous)
        check_table(names, ids)
        assert M.assign_policy_ids(list(reversed(names)), previous) == ids
        holders = {}
        for name in names:
            holders.setdefault(previous.get(name), []).append(name)
        for name in names:
            value = previous.get(name)
            if value.__class__ is int and 0 < value <= MAX and len(holders[value]) == 1:
                assert ids[name] == value
        assert M.assign_policy_ids(names, ids) == ids
    finally:
        M.policy_id_for = original


# -- normalize, the compiler and the verdict ---------------------------------------------------

def _scrambled(names, seed):
    rng = random.Random(seed)
    return dict((name, rng.randint(1, MAX)) for name in names)


@settings(max_examples=150, deadline=None)
@given(policy_and_packets(12), st.integers(0, 1 << 30))
def test_ids_do_not_change_which_rule_decides(case, seed):
    """The verdict's tie-break is the rule's position, never its id: any id table gives the
    same winning rule for every packet, and the same compiled entries but for the ids."""
    doc, pkts = case
    plain = build_policy(doc)
    names = [r.name for r in plain.rules]
    kept = dict(list(_scrambled(names, seed).items())[:len(names) // 2])
    other = M.normalize([r for r in doc["rules"] if r["name"] in plain.by_name],
                        doc["segments"], doc["default_action"], previous_ids=kept,
                        tiers=doc.get("tiers"))
    check_table(names, other.rule_ids)
    assert all(other.rule_ids[n] == i for n, i in kept.items()) or \
        len(set(kept.values())) < len(kept)
    decided = []
    for policy in (plain, other):
        by_id = dict((r.policy_id, r.name) for r in policy.rules)
        decided.append([(a, by_id.get(i)) for a, i in (
            verdict(policy, p["direction"], p["src"], p["dst"], p["protocol"], p["src_port"],
                    p["dst_port"]) for p in pkts)])
    assert decided[0] == decided[1]
    assert _named_entries(plain) == _named_entries(other)


def _named_entries(policy):
    by_id = dict((r.policy_id, r.name) for r in policy.rules)
    compiled = _compiler.compile_policy(policy, 0)
    out = {}
    for name in _compiler.MAP_NAMES:
        rows = []
        for key, value in getattr(compiled, name):
            fields = value.as_dict()
            fields["policy_id"] = by_id.get(fields["policy_id"], fields["policy_id"])
            rows.append((key.pack(), json.dumps(fields, sort_keys=True, default=str)))
        out[name] = sorted(rows)
    return out


def test_normalize_keeps_the_previous_ids_and_compiles_them():
    low, high = sorted(PAIRS[0])
    rules = [{"name": n, "direction": "egress", "dst": "198.18.%d.0/24" % i,
              "action": "allow"} for i, n in enumerate([high, low, "web"])]
    fresh = M.normalize(rules, {}, None)
    assert fresh.rule_ids == {low: crc(low), high: crc(low) + 1, "web": crc("web")}
    # The host gave high the crc32 first (it came before low did): it keeps it.
    held = {high: crc(high), "web": 77}
    policy = M.normalize(rules, {}, None, previous_ids=held)
    assert policy.rule_ids == {high: crc(high), low: crc(low) + 1, "web": 77}
    assert _compiler.compile_policy(policy, 1).rule_ids == policy.rule_ids
    assert set(v.policy_id for _k, v in _compiler.compile_policy(policy, 1).ip_range_map
               if v.policy_id) <= set(policy.rule_ids.values())


# -- where the table lives ---------------------------------------------------------------------

def test_the_table_of_a_source_and_of_a_source_written_before_tables():
    assert _converge.source_rule_ids(None) is None
    assert _converge.source_rule_ids({"rules": [], "rule_ids": {"a": 5}}) == {"a": 5}
    legacy = {"rules": [{"name": "web-to-db"}, {"name": "lab-dns"}]}
    assert _converge.source_rule_ids(legacy) == {"web-to-db": crc("web-to-db"),
                                                 "lab-dns": crc("lab-dns")}


def test_fresh_ids_are_those_a_name_did_not_hold():
    ids = {"kept": 5, "moved": 6, "new": 7}
    assert _converge.fresh_ids({"kept": 5, "moved": 9, "gone": 7}, ids) == {6, 7}
    # Without a table a name's own crc32 is its own (as before tables); a probed id is not.
    assert _converge.fresh_ids(None, {"web": crc("web"), "db": 12}) == \
        ({12} if crc("db") != 12 else set())


def test_previous_ids_come_from_the_source_else_the_boot_restore_record(tmp_path):
    pin = "/sys/fs/bpf/microseg-ids-test"
    params = {"pin_path": pin, "state_dir": str(tmp_path)}
    assert _policy.previous_rule_ids(None, params) is None
    _saved_state.save_policy(str(tmp_path), pin, _saved_state.policy_record(
        {"rules": [{"name": "a"}]}, "digest", 3, {"a": 42}))
    assert _saved_state.policy_saved(str(tmp_path), pin)["rule_ids"] == {"a": 42}
    assert _policy.previous_rule_ids(None, params) == {"a": 42}
    assert _policy.previous_rule_ids({"rules": [], "rule_ids": {"b": 1}}, params) == {"b": 1}
    assert _policy.previous_rule_ids(None, dict(params, _restored_ids={"c": 9})) == {"c": 9}
    assert _policy.previous_rule_ids(None, {"pin_path": pin, "state_dir": None}) is None


def test_rendered_assigns_ids_without_a_table():
    low, high = sorted(PAIRS[-1])
    rules = [{"name": n, "direction": "egress", "dst": "198.18.%d.0/24" % i,
              "action": "allow"} for i, n in enumerate([high, low])]
    rendered = _policy.run({"rules": rules, "segments": None, "default_action": None,
                            "state": "rendered", "pin_path": "/nonexistent",
                            "rule_sources": None}, False, False)
    ids = set(v["value"]["policy_id"] for v in rendered["rendered"]["ip_range_map"]) - {0}
    assert ids == {crc(low), crc(low) + 1}


@pytest.mark.parametrize("count", [100000])
def test_a_hundred_thousand_random_names_get_distinct_ids(count):
    names = list(set(random_names(count, seed=count) + COLLIDING))
    ids = M.assign_policy_ids(names)
    check_table(names, ids)
    again = M.assign_policy_ids(names[:count // 2] + ["extra-%d" % i for i in range(1000)],
                                ids)
    assert all(again[n] == ids[n] for n in names[:count // 2])


def test_the_boot_restore_passes_the_recorded_ids_on(monkeypatch):
    seen = {}

    def run(params, check_mode, want_diff):
        seen.update(params)
        return {"generation": 1, "changed": True, "entry_changes": {}}
    monkeypatch.setattr(_policy, "run", run)
    record = _saved_state.policy_record({"rules": [{"name": "a"}], "default_action": None},
                                        "digest", 4, {"a": 42})
    _restore.restore_policy(record, "/sys/fs/bpf/microseg-ids-test", lambda text: None)
    assert seen["_restored_ids"] == {"a": 42} and seen["state_dir"] is None
    # A record written before tables: no ids, the converge falls back to the crc32s.
    del record["rule_ids"]
    _restore.restore_policy(record, "/sys/fs/bpf/microseg-ids-test", lambda text: None)
    assert seen["_restored_ids"] is None

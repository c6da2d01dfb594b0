# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_policy through ansible-playbook, judged by real traffic between namespaces."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _compiler
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import (
    collections_path, run_playbook)
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import PROBE, Lab
from ansible_collections.ebpf.microseg.tests.harness.policy_names import crc31, names_with_id

SIZES = {"policy_map_size": 200000, "range_map_size": 8192, "session_map_size": 16384}


@pytest.fixture(scope="module")
def fleet():
    """web, db, other on one bridge, the program attached, echo servers running."""
    lab = Lab(subnet="198.18.102", names=("web", "db", "other"))
    pin = new_pin_path("pol")
    try:
        task = {"ebpf.microseg.microseg_program": dict(SIZES, bridge=lab.bridge, pin_path=pin)}
        res = run_playbook([task])
        assert res.rc == 0, res.stdout
        lab.wait_links()
        for ctr in lab.containers.values():
            ctr.serve("tcp", 5432)
            ctr.serve("tcp", 80)
            ctr.serve("udp", 53)
        yield lab, pin
    finally:
        lab.destroy(pin_path=pin)


def segments(lab):
    return {"web": [lab["web"].address + "/32"], "db": [lab["db"].address + "/32"],
            "lab": [lab["web"].address.rsplit(".", 1)[0] + ".0/24"]}


def policy_task(pin, **args):
    args["pin_path"] = pin
    return {"ebpf.microseg.microseg_policy": args}


def converge(pin, check=False, diff=False, **args):
    return run_playbook([policy_task(pin, **args)], check=check, diff=diff)


def generation(pin):
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        return pinned.config().policy_epoch


def matrix(lab):
    """{(src, dst, service): passed} for every ordered pair, measured."""
    out = {}
    for src in lab.containers:
        for dst in lab.containers:
            if src == dst:
                continue
            ctr, target = lab[src], lab[dst].address
            out[(src, dst, "tcp/5432")] = ctr.probe("tcp", target, 5432, 0.5) == "ok"
            out[(src, dst, "tcp/80")] = ctr.probe("tcp", target, 80, 0.5) == "ok"
            out[(src, dst, "udp/53")] = ctr.probe("udp", target, 53, 0.5) == "ok"
            out[(src, dst, "icmp")] = ctr.probe("icmp", target, 0.5) == "ok"
    return out


BASE_RULES = [
    {"name": "web-to-db-postgres", "direction": "both", "src": ["web"], "dst": ["db"],
     "protocol": "tcp", "dst_ports": [5432], "action": "allow"},
    {"name": "lab-dns", "direction": "both", "src": ["lab"], "dst": ["db"],
     "protocol": "udp", "dst_ports": [53], "action": "allow"},
    {"name": "web-ping-db", "direction": "both", "src": ["web"], "dst": ["db"],
     "protocol": "icmp", "action": "log"},
]
DENY_ALL = {"egress": "deny", "ingress": "deny"}


def test_default_deny_with_allow_rules_exactly_the_allowed_pairs_connect(fleet):
    lab, pin = fleet
    res = converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                   state="overridden")
    assert res.rc == 0, res.stdout
    assert res.task()["changed"] is True
    got = matrix(lab)
    allowed = {("web", "db", "tcp/5432"), ("web", "db", "udp/53"), ("other", "db", "udp/53"),
               ("web", "db", "icmp")}
    assert set(k for k, v in got.items() if v) == allowed

    again = converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                     state="overridden")
    assert again.task()["changed"] is False
    assert again.task()["generation"] == generation(pin)


def test_check_mode_and_diff_predict_without_writing(fleet):
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    gen = generation(pin)
    extra = {"name": "web-http-other", "direction": "both", "src": ["web"],
             "dst": [lab["other"].address + "/32"], "protocol": "tcp", "dst_ports": [80],
             "action": "allow"}
    check = converge(pin, check=True, diff=True, rules=[extra])
    res = check.task()
    assert res["changed"] is True and generation(pin) == gen
    assert res["generation"] == gen + 1
    assert [r["name"] for r in res["diff"]["after"]["rules"]] == \
        [r["name"] for r in BASE_RULES] + ["web-http-other"]
    assert lab["web"].probe("tcp", lab["other"].address, 80, 0.5) == "fail"
    real = converge(pin, diff=True, rules=[extra]).task()
    assert real["after"] == res["after"] and real["entry_changes"] == res["entry_changes"]
    assert generation(pin) == gen + 1
    assert lab["web"].probe("tcp", lab["other"].address, 80) == "ok"


def test_entry_changes_count_what_moved_in_the_kernel(fleet):
    lab, pin = fleet
    exact = [{"name": "exact-%d" % i, "direction": "egress", "src": "198.18.99.%d/32" % i,
              "dst": "198.18.98.1/32", "protocol": "tcp", "src_ports": [2000 + i],
              "dst_ports": [443], "action": "allow"} for i in range(20)]
    base = BASE_RULES + exact
    assert converge(pin, rules=base, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").task()["changed"] is True
    moved = [dict(r) for r in base]
    moved[len(BASE_RULES)]["action"] = "deny"            # same key, new value
    moved[len(BASE_RULES) + 1]["dst_ports"] = [444]      # new key, old key gone
    res = converge(pin, rules=moved, segments=segments(lab), default_action=DENY_ALL,
                   state="overridden").task()
    assert res["changed"] is True
    assert res["entry_changes"]["policy_map"] == {"added": 1, "removed": 1, "changed": 1,
                                                  "entries": 20}
    assert all(v == {"added": 0, "removed": 0, "changed": 0, "entries": v["entries"]}
               for name, v in res["entry_changes"].items() if name != "policy_map")
    # Read back: only the new set is left, and it holds the changed entries.
    active = generation(pin) & 1
    with _maps.PinnedMaps(pin, names=["policy_map"]) as pinned:
        held = dict((key.dst_port if key.src_port == 2001 else key.src_port, value.action)
                    for key, value in pinned.items("policy_map")
                    if _converge.entry_set("policy_map", key.pack()) == active)
        assert len(list(pinned.raw_items("policy_map"))) == 20
    assert held[2000] == _abi.MS_ACTION_DENY and held[444] == _abi.MS_ACTION_ALLOW
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").task()["changed"] is True


@pytest.mark.parametrize("bad,needle", [
    ({"name": "r1", "dst": ["nosuchsegment"], "action": "allow"}, "r1"),
    ({"name": "r2", "dst": ["198.18.300.0/24"], "action": "allow"}, "r2"),
    ({"name": "r3", "protocol": "icmp", "dst_ports": [80], "action": "allow"}, "dst_ports"),
    ({"name": "r4", "protocol": "tcp", "dst_ports": [70000], "action": "allow"}, "dst_ports"),
    ({"name": "r5", "action": "permit"}, "action"),
])
def test_bad_input_names_rule_and_field_and_writes_nothing(fleet, bad, needle):
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    gen = generation(pin)
    res = converge(pin, rules=[bad])
    assert res.rc != 0
    msg = res.task()["msg"]
    assert bad["name"] in msg and needle in msg, msg
    assert generation(pin) == gen
    assert lab["web"].probe("tcp", lab["db"].address, 5432) == "ok"


def test_duplicate_names_are_rejected(fleet):
    _lab, pin = fleet
    rule = {"name": "twice", "action": "allow"}
    res = converge(pin, rules=[rule, dict(rule)], state="overridden")
    assert res.rc != 0 and "twice" in res.task()["msg"]


def test_deny_cuts_established_flow_and_allowed_flow_survives(fleet):
    lab, pin = fleet
    rules = BASE_RULES + [{"name": "web-http-db", "direction": "both", "src": ["web"],
                           "dst": ["db"], "protocol": "tcp", "dst_ports": [80],
                           "action": "allow"}]
    assert converge(pin, rules=rules, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    web, db = lab["web"], lab["db"]
    cut = _hold(web, db.address, 80)
    kept = _hold(web, db.address, 5432)
    try:
        assert _say(cut, "a") == "ok" and _say(kept, "a") == "ok"
        # The http rule turns into a deny; the postgres rule changes but still allows.
        changed = [dict(r) for r in rules]
        changed[-1]["action"] = "deny"
        changed[0]["dst_ports"] = [5432, 5433]
        res = converge(pin, rules=changed, segments=segments(lab), default_action=DENY_ALL,
                       state="overridden")
        assert res.task()["changed"] is True
        assert _say(cut, "b") == "fail"
        assert _say(kept, "b") == "ok"
        assert _say(kept, "c") == "ok"
    finally:
        _close(cut)
        _close(kept)


def test_quarantine_stops_all_flows_of_one_container_both_ways(fleet):
    lab, pin = fleet
    default_allow = {"egress": "allow", "ingress": "allow"}
    assert converge(pin, rules=[], segments=segments(lab), default_action=default_allow,
                    state="overridden").rc == 0
    web = lab["web"].address
    assert lab["web"].probe("tcp", lab["db"].address, 80) == "ok"
    held = _hold(lab["web"], lab["other"].address, 80)
    try:
        assert _say(held, "x") == "ok"
        quarantine = [
            {"name": "quarantine-web-out", "direction": "egress", "src": web + "/32",
             "action": "deny"},
            {"name": "quarantine-web-in", "direction": "ingress", "dst": web + "/32",
             "action": "deny"},
        ]
        assert converge(pin, rules=quarantine).task()["changed"] is True
        assert _say(held, "y") == "fail"
        got = matrix(lab)
        assert not any(v for (s, d, _svc), v in got.items() if "web" in (s, d))
        assert all(v for (s, d, _svc), v in got.items() if "web" not in (s, d))
        lifted = converge(pin, rules=[{"name": "quarantine-web-out"},
                                      {"name": "quarantine-web-in"}], state="deleted")
        assert lifted.task()["changed"] is True
        assert lab["web"].probe("tcp", lab["db"].address, 80) == "ok"
    finally:
        _close(held)


def test_a_top_tier_quarantine_wins_over_a_more_specific_allow(fleet):
    """web-to-db names db more precisely than the quarantine's "any": without tiers the
    allow wins (most specific first), in a lower tier it loses, on real traffic, and the
    established postgres flow is cut at its next packet."""
    lab, pin = fleet
    web = lab["web"].address
    quarantine = [
        {"name": "quarantine-web-out", "tier": "incident", "direction": "egress",
         "src": web + "/32", "action": "deny"},
        {"name": "quarantine-web-in", "tier": "incident", "direction": "ingress",
         "dst": web + "/32", "action": "deny"},
    ]
    untiered = [dict((k, v) for k, v in rule.items() if k != "tier") for rule in quarantine]
    assert converge(pin, rules=BASE_RULES + untiered, segments=segments(lab),
                    default_action=DENY_ALL, state="overridden").rc == 0
    assert lab["web"].probe("tcp", lab["db"].address, 5432) == "ok"      # the allow wins
    held = _hold(lab["web"], lab["db"].address, 5432)
    try:
        assert _say(held, "x") == "ok"
        check = converge(pin, check=True, diff=True, rules=BASE_RULES + quarantine,
                         tiers=["incident", "app"], segments=segments(lab),
                         default_action=DENY_ALL, state="overridden")
        assert check.task()["changed"] is True
        assert check.task()["diff"]["after"]["tiers"] == ["incident", "app"]
        assert _say(held, "y") == "ok"                 # check mode wrote nothing
        res = converge(pin, rules=BASE_RULES + quarantine, tiers=["incident", "app"],
                       segments=segments(lab), default_action=DENY_ALL, state="overridden")
        assert res.rc == 0 and res.task()["changed"] is True, res.stdout
        assert _say(held, "z") == "fail"
        got = matrix(lab)
        assert not any(v for (s, d, _svc), v in got.items() if "web" in (s, d))
        again = converge(pin, rules=BASE_RULES + quarantine, tiers=["incident", "app"],
                         segments=segments(lab), default_action=DENY_ALL, state="overridden")
        assert again.task()["changed"] is False
        gathered = converge(pin, state="gathered").task()["gathered"]
        assert gathered["tiers"] == ["incident", "app"]
        assert [r.get("tier") for r in gathered["rules"]][-2:] == ["incident", "incident"]
        # A merged run that names no tiers keeps the held ones.
        kept = converge(pin, rules=[{"name": "web-ping-db", "direction": "both",
                                     "src": ["web"], "dst": ["db"], "protocol": "icmp",
                                     "action": "allow"}])
        assert kept.rc == 0, kept.stdout
        assert converge(pin, state="gathered").task()["gathered"]["tiers"] == ["incident", "app"]
        # A rule naming a tier the policy does not declare is refused, nothing written.
        before = generation(pin)
        bad = converge(pin, rules=[dict(quarantine[0], name="q2", tier="incidnet")])
        assert bad.rc != 0
        assert "rule 'q2' (rules[0]): tier 'incidnet': must be one of the declared tiers " \
               "(incident, app), did you mean incident?" in bad.task()["msg"], bad.task()["msg"]
        assert generation(pin) == before
    finally:
        _close(held)
        converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                 state="overridden", tiers=[])


def test_gathered_and_rendered(fleet):
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    gathered = converge(pin, state="gathered").task()
    assert gathered["changed"] is False
    assert [r["name"] for r in gathered["gathered"]["rules"]] == [r["name"] for r in BASE_RULES]
    assert gathered["gathered"]["default_action"] == DENY_ALL
    rendered = converge("/nonexistent/pins", state="rendered", rules=BASE_RULES,
                        segments=segments(lab), default_action=DENY_ALL).task()
    assert rendered["changed"] is False
    assert sum(len(v) for v in rendered["rendered"].values()) > 0


def test_gathered_text_parsed_back_restores_the_same_policy_and_traffic(fleet):
    """The saved running_config is a rollback: parsed (no host, no root) then overridden
    brings back the policy, its generation-free view and the measured matrix."""
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    saved = converge(pin, state="gathered").task()
    first = matrix(lab)
    assert converge(pin, rules=[], default_action={"egress": "allow", "ingress": "allow"},
                    state="overridden").task()["changed"] is True
    assert matrix(lab) != first         # the allow-all policy lets more through

    text = saved["running_config"]
    assert text.splitlines()[:2] == ["default egress deny", "default ingress deny"]
    read = converge("/nonexistent/pins", state="parsed", running_config=text).task()
    assert read["changed"] is False
    assert read["parsed"] == saved["gathered"]
    back = converge(pin, rules=read["parsed"]["rules"], segments=read["parsed"]["segments"],
                    default_action=read["parsed"]["default_action"], state="overridden")
    assert back.task()["changed"] is True
    assert converge(pin, state="gathered").task()["gathered"] == saved["gathered"]
    assert matrix(lab) == first
    again = converge(pin, rules=read["parsed"]["rules"], segments=read["parsed"]["segments"],
                     default_action=read["parsed"]["default_action"], state="overridden")
    assert again.task()["changed"] is False


def test_parsed_refuses_bad_text_naming_the_line_and_touches_nothing(fleet):
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    before = generation(pin)
    res = converge(pin, state="parsed",
                   running_config="default egress deny\nrule a egress dst db proto tcp dport 99999 allow\n")
    assert res.rc != 0
    task = res.task()
    assert task["errors"] == [
        "rule 'a' (running_config line 2): dst[0] 'db': unknown segment (known: none)",
        "rule 'a' (running_config line 2): dst_ports[0] 99999: port 99999 is out of range 0-65535"]
    assert generation(pin) == before
    misuse = converge(pin, state="gathered", running_config="rule a egress deny")
    assert misuse.rc != 0 and "only read with state=parsed" in misuse.task()["msg"]


def test_sigkill_mid_converge_leaves_old_policy_in_force(fleet):
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    gen = generation(pin)
    # 60,000 exact rules, and the converge is stopped after its first map is written
    # (fault point "mid_write"), then killed: a half-written inactive set.
    script = textwrap.dedent("""
        import sys
        from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
        rules = [{"name": "bulk-%d" % i, "direction": "egress", "src": "198.19.%d.%d/32"
                  % (i >> 8 & 255, i & 255), "dst": "198.19.250.1/32", "protocol": "tcp",
                  "src_ports": [1024 + i % 60000], "dst_ports": [443], "action": "allow"}
                 for i in range(60000)]
        _policy.run({"rules": rules, "segments": None, "default_action": None,
                     "state": "merged", "pin_path": sys.argv[1]}, False, False)
    """)
    marker = pin.replace("/sys/fs/bpf/", "/tmp/") + ".fault"
    env = dict(os.environ, PYTHONPATH=collections_path(), MICROSEG_FAULT_PAUSE="mid_write",
               MICROSEG_FAULT_MARKER=marker)
    proc = subprocess.Popen([sys.executable, "-c", script, pin], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not os.path.exists(marker):
            time.sleep(0.05)
        assert os.path.exists(marker), "the converge never reached the fault point"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if os.path.exists(marker):
            os.unlink(marker)
    assert generation(pin) == gen
    assert _set_count(pin, "policy_map", gen & 1 ^ 1) > 1000   # the half-written set
    assert lab["web"].probe("tcp", lab["db"].address, 5432) == "ok"
    assert lab["web"].probe("tcp", lab["db"].address, 80, 0.5) == "fail"
    # The next identical run removes the half-written set (a change) without a switch.
    res = converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                   state="overridden")
    assert res.task()["changed"] is True
    assert res.task()["stale_entries_removed"] > 1000
    assert generation(pin) == gen
    assert _set_count(pin, "policy_map", gen & 1 ^ 1) == 0
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").task()["changed"] is False
    # And a real change after a kill converges normally.
    more = BASE_RULES + [{"name": "web-http-db", "direction": "both", "src": ["web"],
                          "dst": ["db"], "protocol": "tcp", "dst_ports": [80],
                          "action": "allow"}]
    assert converge(pin, rules=more, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").task()["changed"] is True
    assert generation(pin) == gen + 1
    assert lab["web"].probe("tcp", lab["db"].address, 80) == "ok"


def _set_count(pin, name, policy_set):
    with _maps.PinnedMaps(pin, names=[name]) as pinned:
        return sum(1 for key, _value in pinned.items(name)
                   if _converge.entry_set(name, key.pack()) == policy_set)


def _hold(ctr, address, port):
    proc = subprocess.Popen(["ip", "netns", "exec", ctr.netns, sys.executable, PROBE, "hold",
                             address, str(port), "1.0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.readline().strip() == "connected"
    return proc


def _say(proc, word):
    proc.stdin.write(word + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip() or "fail"


def _close(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


def test_concurrent_converges_serialize(fleet):
    """Two runs at once: both succeed, one after the other (two generations), no mix."""
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    gen = generation(pin)
    script = textwrap.dedent("""
        import json, sys
        from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
        rules = [{"name": "%s-%d" % (sys.argv[2], i), "direction": "egress",
                  "dst": "198.19.%d.%d/32" % (i >> 8, i & 255), "protocol": "udp",
                  "dst_ports": [int(sys.argv[3])], "action": "allow"} for i in range(3000)]
        res = _policy.run({"rules": rules, "segments": None, "default_action": None,
                           "state": "overridden", "pin_path": sys.argv[1]}, False, False)
        print(json.dumps({"changed": res["changed"], "generation": res["generation"]}))
    """)
    env = dict(os.environ, PYTHONPATH=collections_path())
    procs = [subprocess.Popen([sys.executable, "-c", script, pin, name, port], env=env,
                              stdout=subprocess.PIPE, universal_newlines=True)
             for name, port in (("first", "1000"), ("second", "2000"))]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["generation"] for r in results) == [gen + 1, gen + 2]
    assert generation(pin) == gen + 2
    held = converge(pin, state="gathered").task()["gathered"]["rules"]
    prefixes = set(r["name"].split("-")[0] for r in held)
    assert len(prefixes) == 1 and len(held) == 3000      # exactly one run's rules, whole
    assert _set_count(pin, "policy_map", 0) + _set_count(pin, "policy_map", 1) == 0


def test_policy_larger_than_the_maps_is_refused_before_writing(fleet):
    lab, pin = fleet
    assert converge(pin, rules=BASE_RULES, segments=segments(lab), default_action=DENY_ALL,
                    state="overridden").rc == 0
    gen = generation(pin)
    # 9,000 remote /32s need 9,000 first-stage LPM entries; range_map_size is 8,192.
    rules = [{"name": "host-%d" % i, "direction": "egress",
              "dst": "198.19.%d.%d/32" % (i >> 8, i & 255), "action": "allow"}
             for i in range(9000)]
    res = converge(pin, rules=rules, state="overridden")
    assert res.rc != 0
    assert "does not fit" in res.task()["msg"] and "range_map" in res.task()["msg"]
    assert generation(pin) == gen
    assert lab["web"].probe("tcp", lab["db"].address, 5432) == "ok"


# -- policy ids -------------------------------------------------------------------------------

def _rule_hits(pin):
    with _maps.PinnedMaps(pin, names=["rule_stats_map"]) as pinned:
        return dict((key.value, value.hits) for key, value in pinned.items("rule_stats_map"))


def _active_ids(pin):
    """{name: id} stored with the active set, and the ids its entries carry."""
    active = generation(pin) & 1
    table = _converge.read_source(pin, active)["rule_ids"]
    used = set()
    with _maps.PinnedMaps(pin, names=list(_converge.POLICY_MAPS)) as pinned:
        for name in _converge.POLICY_MAPS:
            for key, value in pinned.items(name):
                if _converge.entry_set(name, key.pack()) == active and value.policy_id:
                    used.add(value.policy_id)
    return table, used


def _names(pin):
    """{policy id: name} as microseg_facts and the monitor name the counters."""
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        return _facts.rule_names(pin, pinned.config())


def _predicted_ids(pin, monkeypatch, **params):
    """The ids a check-mode run of the module's code compiles, caught at the compiler."""
    seen = []
    real = _compiler.compile_policy

    def catch(policy, policy_set):
        seen.append(policy.rule_ids)
        return real(policy, policy_set)
    monkeypatch.setattr(_compiler, "compile_policy", catch)
    args = {"rules": [], "segments": None, "default_action": None, "state": "merged",
            "pin_path": pin, "rule_sources": None, "state_dir": None}
    args.update(params)
    _policy.run(args, True, False)
    monkeypatch.undo()
    return seen[-1]


def test_colliding_names_get_distinct_ids_and_a_freed_id_starts_from_zero(
        fleet, monkeypatch):
    """Three names with the same crc32 k: the first two converge to k and k+1; the second
    goes, the third comes and takes k+1 with zero hits, the first keeps k and its hits."""
    lab, pin = fleet
    web, db = lab["web"], lab["db"]
    k = crc31("the-colliding-id")
    first, second, third = sorted(names_with_id(k, 3))

    def allow(name, port):
        return {"name": name, "direction": "both", "src": ["web"], "dst": ["db"],
                "protocol": "tcp", "dst_ports": [port], "action": "allow"}
    plain = {"name": "web-dns-db", "direction": "both", "src": ["web"], "dst": ["db"],
             "protocol": "udp", "dst_ports": [53], "action": "allow"}
    rules = [allow(second, 80), allow(first, 5432), plain]
    args = dict(segments=segments(lab), default_action=DENY_ALL, state="overridden")
    predicted = _predicted_ids(pin, monkeypatch, rules=rules, **args)
    assert converge(pin, rules=rules, **args).task()["changed"] is True
    table, used = _active_ids(pin)
    assert table == predicted == {first: k, second: k + 1, "web-dns-db": crc31("web-dns-db")}
    assert used == set(table.values())
    for _round in range(3):
        assert web.probe("tcp", db.address, 5432) == "ok"
        assert web.probe("tcp", db.address, 80) == "ok"
    assert web.probe("udp", db.address, 53) == "ok"
    hits = _rule_hits(pin)
    assert hits[k] > 0 and hits[k + 1] > 0 and hits[table["web-dns-db"]] > 0
    names = _names(pin)
    assert names[k] == first and names[k + 1] == second

    # second and the plain rule go, third comes: k + 1 is free again and third takes it.
    rules = [allow(first, 5432), allow(third, 80)]
    predicted = _predicted_ids(pin, monkeypatch, rules=rules, **args)
    res = converge(pin, rules=rules, **args).task()
    assert res["changed"] is True and res["stale_entries_removed"] == 0
    table, used = _active_ids(pin)
    assert table == predicted == {first: k, third: k + 1}
    assert used == {k, k + 1}
    after = _rule_hits(pin)
    assert k + 1 not in after                   # second's hits are not third's
    assert after[k] == hits[k]                  # first kept its id and its hits
    # A removed rule whose id nobody took keeps its counter, as before ids were assigned.
    assert after[crc31("web-dns-db")] == hits[crc31("web-dns-db")]
    assert web.probe("tcp", db.address, 80) == "ok"
    counted = _rule_hits(pin)
    assert 0 < counted[k + 1] < hits[k + 1]     # one connection, not second's three
    names = _names(pin)
    assert names[k + 1] == third and names[crc31("web-dns-db")] == "web-dns-db"

    # The same input again: nothing changes, the counters live on.
    assert converge(pin, rules=rules, **args).task()["changed"] is False
    assert _rule_hits(pin)[k + 1] == counted[k + 1]

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=parsed: the policy read from text, checked as rules are, and gathered's lines.

The round trips are the contract: for any valid policy, the line spelling that gathered
returns and the JSON/YAML of gathered itself both parse back to the same canonical policy.
Bad text is refused naming the line (and the rule and field where there is one), with
every problem of the text at once.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_text as T
from ansible_collections.ebpf.microseg.tests.harness.policy_strategies import (
    build_policy, policy_docs)

LAB_TEXT = """
# the lab's policy
default egress deny
default ingress deny
tiers incident app
segment db 198.18.2.10/32, 198.18.2.11/32
segment web 198.18.1.0/24
rule web-to-db both src web dst db proto tcp dport 5432,8000-8080 allow
rule "quarantine out" tier incident egress src 198.18.1.7/32 deny   # trailing comment
rule ping both proto icmp log
rule gre egress dst 198.18.3.0/24 proto 47 allow
"""


def canonical(doc):
    policy = build_policy(doc)
    out = {"rules": policy.to_rules(), "segments": dict(doc["segments"]),
           "default_action": dict(doc["default_action"])}
    if policy.tiers:
        out["tiers"] = list(policy.tiers)
    return out


def refused(text):
    with pytest.raises(_policy.PolicyInputError) as info:
        _policy.parsed(text)
    return info.value.errors


def test_lab_text_reads_every_statement():
    got = _policy.parsed(LAB_TEXT)
    assert got["changed"] is False
    policy = got["parsed"]
    assert policy["default_action"] == {"egress": "deny", "ingress": "deny"}
    assert policy["tiers"] == ["incident", "app"]
    assert policy["segments"] == {"db": ["198.18.2.10/32", "198.18.2.11/32"],
                                  "web": ["198.18.1.0/24"]}
    by_name = dict((rule["name"], rule) for rule in policy["rules"])
    assert list(by_name) == ["web-to-db", "quarantine out", "ping", "gre"]
    assert by_name["web-to-db"] == {"name": "web-to-db", "direction": "both", "src": ["web"],
                                    "dst": ["db"], "protocol": "tcp",
                                    "dst_ports": [5432, "8000-8080"], "action": "allow"}
    assert by_name["quarantine out"]["tier"] == "incident"
    assert by_name["quarantine out"]["src"] == ["198.18.1.7/32"]
    assert by_name["gre"]["protocol"] == 47


def test_lines_json_yaml_and_the_module_result_agree():
    policy = _policy.parsed(LAB_TEXT)["parsed"]
    lines = T.format_lines(policy)
    for text in (lines, json.dumps(policy), yaml.safe_dump(policy),
                 json.dumps({"changed": False, "gathered": policy, "running_config": lines})):
        assert _policy.parsed(text)["parsed"] == policy
    bare = [{"name": "ping", "direction": "both", "protocol": "icmp", "action": "log"}]
    assert _policy.parsed(json.dumps(bare))["parsed"]["rules"] == bare


@settings(max_examples=150, deadline=None)
@given(policy_docs())
def test_gathered_lines_round_trip(doc):
    policy = canonical(doc)
    assert _policy.parsed(T.format_lines(policy))["parsed"] == policy
    assert _policy.parsed(json.dumps(policy))["parsed"] == policy


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
               max_size=20).filter(lambda s: s.strip()))
def test_any_rule_name_survives_the_line_spelling(name):
    policy = {"rules": [{"name": name, "direction": "egress", "dst": ["198.18.1.0/24"],
                         "protocol": "any", "action": "deny"}],
              "segments": {}, "default_action": {"egress": "allow", "ingress": "allow"}}
    assert _policy.parsed(T.format_lines(policy))["parsed"]["rules"][0]["name"] == name


def test_every_problem_at_once_naming_line_rule_and_field():
    errors = refused("rule x egress src 198.18.300.0/24 allow\n"
                     "rule y egres deny\n"
                     "foo bar\n"
                     "default egress deny\n"
                     "default egress allow\n"
                     "rule x ingress deny\n"
                     "rule z egress proto tcp dport 5432, allow\n")
    assert errors == [
        "rule 'y' (running_config line 2): word 'egres': unknown, did you mean egress? (a rule "
        "line takes egress/ingress/both, allow/deny/log, dport, dst, proto, sport, src, tier)",
        "running_config line 3 'foo': unknown statement (known: rule, segment, default, tiers)",
        "running_config line 5: default egress is given again (first on line 4)",
        "rule 'x' (running_config line 1): src[0] '198.18.300.0/24': not an IPv4 address, an "
        "octet is over 255",
        "rule 'x' (running_config line 6): name: the same name as running_config line 1 "
        "(names must be unique)",
        # a comma says another port follows: the action word is read as one
        "rule 'z' (running_config line 7): action: is required (allow, deny or log)",
        "rule 'z' (running_config line 7): dst_ports[1] 'allow': not a port or a low-high range",
    ]


@pytest.mark.parametrize("text,words", [
    ("rule", "rule needs a name first"),
    ("rule x dport , allow", "rule 'x' (running_config line 1): dport: needs a value"),
    ("rule x src a,,b deny", "src: an empty item between commas"),
    ("rule x src a b deny", "word 'b': unknown"),
    ("rule x egress ingress deny", "direction ingress: is given twice"),
    ("rule x egress proto tcp dport 80 allow deny", "action deny: is given twice"),
    ("rule x egress proto tcp dport 80 dport 81 allow", "dport: is given twice"),
    ("rule 'x egress deny", "cannot split the line: No closing quotation"),
    ("segment", "segment needs a name"),
    ("segment s 198.18.1.0/24,", "segment s: ends with a comma"),
    ("segment s 198.18.1.0/24\nsegment s 198.18.2.0/24", "segment s is given again (first on line 1)"),
    ("default egress", "default takes a direction and an action"),
    ("default egress permit", "default_action.egress 'permit': must be allow or deny"),
    ("default sideways deny", "default_action.sideways: unknown direction"),
    ("rule x egress dst 198.18.1.0/24 dport 80 allow", "dst_ports [80]: ports need protocol tcp or udp, not any"),
    ("rule x egress dst web allow", "dst[0] 'web': unknown segment"),
    ("rule x egress dst 198.18.1.0/24", "action: is required"),
    ('{"rules": [{"name": "a", "action": "permit"}]}',
     "rule 'a' (running_config rules[0]): action 'permit': must be allow, deny or log"),
    ('{"rules": [], "sessions": []}', "unknown key 'sessions'"),
    ("42", "must hold a mapping"),
    ("rules: [\n", "neither JSON, YAML nor policy lines"),
    ("   \n# only a comment\n", "must hold a mapping"),
    ("", "is empty"),
])
def test_bad_text_is_refused_with_a_message_that_names_it(text, words):
    errors = refused(text)
    assert any(words in error for error in errors), errors


def test_yaml_is_optional_json_and_lines_still_read(monkeypatch):
    monkeypatch.setattr(T, "HAS_YAML", False)
    assert _policy.parsed('{"rules": []}')["parsed"]["rules"] == []
    assert _policy.parsed("rule a egress deny")["parsed"]["rules"][0]["action"] == "deny"
    errors = refused("rules: []")
    assert "YAML needs PyYAML" in errors[0]

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy as text, for microseg_policy's state=parsed and gathered's running_config.

Two spellings are read. The structured one is the document ``gathered`` returns (rules,
segments, default_action, tiers) as JSON or YAML, or that module result itself, or a bare
list of rules. The line one holds one statement per line, in the words of the rule fields::

    # comments and blank lines are ignored
    default egress deny
    default ingress deny
    tiers incident app
    segment web 198.18.1.0/24
    segment db 198.18.2.10/32, 198.18.2.11/32
    rule web-to-db both src web dst db proto tcp dport 5432 allow
    rule quarantine-out tier incident egress src 198.18.1.7/32 deny

A rule line is ``rule NAME`` then, in any order, a direction (egress, ingress, both), an
action (allow, deny, log) and ``tier T``, ``src A[, B]``, ``dst A[, B]``, ``proto P``,
``sport PORTS`` and ``dport PORTS``. Words are split as a POSIX shell splits them, so a name
with spaces or commas is quoted. format_lines() writes what read_lines() reads back.

Nothing here checks the values: the caller normalizes the document, so a bad CIDR read from
text is refused with the same message as in O(rules), naming the line it came from.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import shlex

from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model

try:
    import yaml
    HAS_YAML = True
except ImportError:     # targets need not have PyYAML: JSON and lines still read
    HAS_YAML = False

DIRECTION_WORDS = tuple(_policy_model.DIRECTIONS)
ACTION_WORDS = _policy_model.ACTIONS
# word on the line -> rule field; a field that takes a list may be given several values
VALUE_WORDS = {"tier": "tier", "src": "src", "dst": "dst", "proto": "protocol",
               "sport": "src_ports", "dport": "dst_ports"}
LIST_FIELDS = ("src", "dst", "src_ports", "dst_ports")
STATEMENTS = ("rule", "segment", "default", "tiers")
DOCUMENT_KEYS = ("rules", "segments", "default_action", "tiers")


class TextProblems(Exception):
    """The text could not be read as a policy; problems: PolicyErrors, in line order."""

    def __init__(self, problems):
        super(TextProblems, self).__init__("; ".join(p.describe() for p in problems))
        self.problems = problems


def _line_error(line_number, message, value=_policy_model.NO_VALUE):
    return _policy_model.PolicyError(None, "running_config line %d" % line_number, message,
                                     value=value)


def _rule_error(line_number, rule, field, message, value=_policy_model.NO_VALUE):
    """rule 'x' (running_config line 7): dport: needs a value."""
    return _policy_model.PolicyError(rule, field, message, value=value,
                                     position="running_config line %d" % line_number)


def looks_like_lines(text):
    """True when the first statement of text is one of the line spelling's."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            return words[0] in STATEMENTS
    return False


def _is_comma(word):
    return set(word) == set(",")


def read(text):
    """(document, position_of, problems) from either spelling.

    document has the keys normalize() takes; position_of(i) names where rule i was written
    (``running_config line 7`` or ``running_config rules[2]``); problems: the lines that could
    not be read (left out of document), for normalize() to report with its own. TextProblems
    when the text cannot be read at all.
    """
    if not isinstance(text, str) or not text.strip():
        raise TextProblems([_policy_model.PolicyError(
            None, "running_config", "is empty: give the text gathered returned (JSON or YAML) "
            "or policy lines")])
    if looks_like_lines(text):
        return read_lines(text)
    return read_structured(text)


def read_structured(text):
    data = _load_structured(text)
    if isinstance(data, dict) and isinstance(data.get("gathered"), dict):
        data = data["gathered"]     # the whole module result, registered and saved
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict):
        raise TextProblems([_policy_model.PolicyError(
            None, "running_config", "must hold a mapping with %s (what gathered returns), a "
            "list of rules or policy lines, got %s" % (", ".join(DOCUMENT_KEYS),
                                                       _policy_model.kind(data)))])
    unknown = sorted(set(data) - set(DOCUMENT_KEYS), key=str)
    if unknown:
        raise TextProblems([_policy_model.PolicyError(
            None, "running_config", "unknown key%s %s (known: %s)"
            % ("s" if len(unknown) > 1 else "", ", ".join(repr(k) for k in unknown),
               ", ".join(DOCUMENT_KEYS)))])
    document = {"rules": data.get("rules") or [], "segments": data.get("segments") or {},
                "default_action": data.get("default_action") or {}}
    if data.get("tiers"):
        document["tiers"] = data["tiers"]

    def position_of(index):
        return None if index is None else "running_config rules[%d]" % index
    return document, position_of, []


def _load_structured(text):
    try:
        return json.loads(text)
    except ValueError as json_error:
        if not HAS_YAML:
            raise TextProblems([_policy_model.PolicyError(
                None, "running_config", "not JSON (%s) and not policy lines; YAML needs "
                "PyYAML, which this Python lacks" % json_error)])
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as yaml_error:
        mark = getattr(yaml_error, "problem_mark", None)
        where = " at line %d" % (mark.line + 1) if mark is not None else ""
        raise TextProblems([_policy_model.PolicyError(
            None, "running_config", "neither JSON, YAML nor policy lines: YAML says %s%s"
            % (getattr(yaml_error, "problem", None) or yaml_error, where))])


def _words(line):
    lexer = shlex.shlex(line, posix=True, punctuation_chars=",")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def read_lines(text):
    rules, rule_lines, segments, default_action, tiers = [], [], {}, {}, None
    seen = {}           # statement key -> line it was first given on
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            words = _words(line)
        except ValueError as exc:       # an unclosed quote
            problems.append(_line_error(number, "cannot split the line: %s" % exc))
            continue
        if not words:
            continue
        statement, args = words[0], words[1:]
        try:
            if statement == "rule":
                rules.append(_rule_words(number, args))
                rule_lines.append(number)
                continue
            if statement == "segment":
                if not args:
                    raise _line_error(number, "segment needs a name, then its CIDRs")
                key = ("segment", args[0])
                values = _comma_list(args[1:], lambda message, name=args[0]: _line_error(
                    number, "segment %s: %s" % (name, message)))
                segments[args[0]] = values
            elif statement == "default":
                if len(args) != 2:
                    raise _line_error(number, "default takes a direction and an action, for "
                                      "example 'default egress deny'", value=" ".join(args))
                key = ("default", args[0])
                default_action[args[0]] = args[1]
            elif statement == "tiers":
                key = ("tiers",)
                tiers = [a for a in args if not _is_comma(a)]
            else:
                raise _line_error(number, "unknown statement%s (known: %s)" % (
                    _policy_model.close_match(statement, STATEMENTS), ", ".join(STATEMENTS)),
                    value=statement)
        except _policy_model.PolicyError as exc:
            problems.append(exc)
            continue
        if key in seen:
            problems.append(_line_error(number, "%s is given again (first on line %d)"
                                        % (" ".join(key), seen[key])))
        seen.setdefault(key, number)
    document = {"rules": rules, "segments": segments, "default_action": default_action}
    if tiers:
        document["tiers"] = tiers

    def position_of(index):
        return None if index is None else "running_config line %d" % rule_lines[index]
    return document, position_of, problems


def _comma_list(words, error):
    """Values separated by commas (spaces around them optional); error(message) -> exception."""
    values = []
    expect_value = True
    for word in words:
        if _is_comma(word):
            if expect_value or len(word) > 1:
                raise error("an empty item between commas")
            expect_value = True
            continue
        if not expect_value:
            raise error("%r follows %r without a comma" % (word, values[-1]))
        values.append(word)
        expect_value = False
    if expect_value and values:
        raise error("ends with a comma")
    return values


def _port_value(word):
    return int(word) if word.isdigit() else word


def _rule_words(number, args):
    if not args or _is_comma(args[0]):
        raise _line_error(number, "rule needs a name first, for example "
                          "'rule web-to-db both dst db proto tcp dport 5432 allow'")
    name, rest = args[0], args[1:]
    rule = {"name": name}

    def put(field, value, word):
        if field in rule:
            raise _rule_error(number, name, word, "is given twice")
        rule[field] = value
    index = 0
    while index < len(rest):
        word = rest[index]
        index += 1
        if word in DIRECTION_WORDS:
            put("direction", word, "direction %s" % word)
        elif word in ACTION_WORDS:
            put("action", word, "action %s" % word)
        elif word in VALUE_WORDS:
            field = VALUE_WORDS[word]
            end = index
            if field in LIST_FIELDS:
                # a list runs while commas join its values
                while end < len(rest) and (end == index or _is_comma(rest[end]) or
                                           _is_comma(rest[end - 1])):
                    end += 1
            else:
                end = index + 1
            values = rest[index:end]
            if not values or _is_comma(values[0]):
                raise _rule_error(number, name, word, "needs a value")
            if field in LIST_FIELDS:
                values = _comma_list(values, lambda message, word=word: _rule_error(
                    number, name, word, message))
                if field.endswith("ports"):
                    values = [_port_value(v) for v in values]
                put(field, values, word)
            else:
                value = values[0]
                put(field, int(value) if field == "protocol" and value.isdigit() else value,
                    word)
            index = end
        else:
            hint = _policy_model.close_match(word, DIRECTION_WORDS + ACTION_WORDS +
                                             tuple(VALUE_WORDS))
            raise _rule_error(number, name, "word", "unknown%s (a rule line takes %s, %s, %s)" % (
                hint, "/".join(DIRECTION_WORDS), "/".join(ACTION_WORDS),
                ", ".join(sorted(VALUE_WORDS))), value=word)
    return rule


def _quote(word):
    word = str(word)
    return word if word and all(c.isalnum() or c in "-_./:" for c in word) else \
        shlex.quote(word)


def format_lines(document):
    """The line spelling of a canonical document (gathered's); read_lines() reads it back."""
    lines = []
    for direction in ("egress", "ingress"):
        action = (document.get("default_action") or {}).get(direction)
        if action:
            lines.append("default %s %s" % (direction, action))
    if document.get("tiers"):
        lines.append("tiers " + " ".join(_quote(t) for t in document["tiers"]))
    for name, cidrs in sorted((document.get("segments") or {}).items()):
        words = ["segment", _quote(name)]
        if cidrs:
            words.append(", ".join(_quote(c) for c in cidrs))
        lines.append(" ".join(words))
    for rule in document.get("rules") or []:
        words = ["rule", _quote(rule["name"])]
        if rule.get("tier") is not None:
            words += ["tier", _quote(rule["tier"])]
        words.append(rule.get("direction", "both"))
        for field, word in (("src", "src"), ("dst", "dst")):
            if rule.get(field):
                values = rule[field] if isinstance(rule[field], list) else [rule[field]]
                words += [word, ", ".join(_quote(v) for v in values)]
        protocol = rule.get("protocol")
        if protocol not in (None, "any"):
            words += ["proto", _quote(protocol)]
        for field, word in (("src_ports", "sport"), ("dst_ports", "dport")):
            if rule.get(field):
                words += [word, ", ".join(_quote(v) for v in rule[field])]
        words.append(rule.get("action", "allow"))
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"

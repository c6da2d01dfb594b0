# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option table is the one place an option is written; every copy that cannot be built
from it (the module's documentation, the C defaults, the role's pass-through) agrees with it."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import re

import pytest
import yaml
from hypothesis import given, strategies as st

from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _program
from ansible_collections.ebpf.microseg.plugins.module_utils import _program_options as opts
from ansible_collections.ebpf.microseg.plugins.modules import microseg_program
from ansible_collections.ebpf.microseg.tests.harness.module_params import program_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))


def module_params(**extra):
    params = program_defaults()
    params.update(extra)
    return params


def test_the_documentation_says_what_the_table_says():
    documented = yaml.safe_load(microseg_program.DOCUMENTATION)["options"]
    for option in opts.OPTIONS:
        doc = documented[option.name]
        assert doc["type"] == option.type, option.name
        assert doc.get("default") == option.default, option.name
        assert doc.get("choices") == (list(option.choices) if option.choices else None), \
            option.name
        assert doc.get("description"), option.name


def test_the_argument_spec_is_the_table():
    spec = microseg_program.argument_spec()
    for option in opts.OPTIONS:
        assert spec[option.name] == option.argument_spec(), option.name


def c_defaults():
    """Every `#define MS_... <number>` under files/bpf, by macro."""
    found = {}
    for directory, _dirs, files in os.walk(os.path.join(ROOT, "files", "bpf")):
        for name in files:
            with open(os.path.join(directory, name)) as handle:
                for macro, value in re.findall(r"^#define (MS_[A-Z_]+) (\d+)\s*$",
                                               handle.read(), re.M):
                    found[macro] = int(value)
    return found


def test_the_c_defaults_are_the_table_defaults():
    defaults = c_defaults()
    for option in opts.COMPILED:
        assert defaults.get(option.macro) == option.default, option.macro


def test_compile_flags_carry_every_compiled_option():
    sizes = dict(opts.DEFAULT_SIZES, session_map_size=4096)
    flags = _loader.cflags_for("/sys/fs/bpf/x", sizes, "/tmp/src")
    assert "-DMS_SESSION_MAP_SIZE=4096" in flags
    assert sorted(f.split("=")[0][2:] for f in flags if f.startswith("-DMS_") and
                  "PIN_DIR" not in f) == sorted(o.macro for o in opts.COMPILED)
    assert _maps.DEFAULT_SIZES == opts.DEFAULT_SIZES


def test_the_role_passes_every_option_through():
    with open(os.path.join(ROOT, "roles", "microseg", "tasks", "present.yml")) as handle:
        tasks = yaml.safe_load(handle)
    program = [t for t in tasks if "ebpf.microseg.microseg_program" in t][0]
    args = program["ebpf.microseg.microseg_program"]
    for option in opts.OPTIONS:
        assert args.get(option.name) == \
            "{{ microseg_program_options.%s | default(omit) }}" % option.name, option.name


def test_defaults_validate_and_give_the_default_sizes():
    assert _program.validate(module_params()) == opts.DEFAULT_SIZES


@pytest.mark.parametrize("name,value,message", [
    ("session_map_size", 8, "session_map_size: 8 is out of range (16..67108864)"),
    ("policy_map_size", 0, "policy_map_size: 0 is out of range (1..16777216)"),
    ("log_ring_pages", 12, "log_ring_pages: 12 is not a power of two"),
    ("pressure_warning_percent", 101, "pressure_warning_percent: 101 is not a percentage"),
    ("syn_flood_threshold", -1, "syn_flood_threshold: -1 is out of range (0..4294967295)"),
    ("log_rate", -5, "log_rate: -5 is out of range (0..4294967295)"),
    ("endpoint_session_quota", -1, "endpoint_session_quota: -1 is out of range (0 disables"),
])
def test_a_bad_value_is_named(name, value, message):
    with pytest.raises(_program.ProgramError) as raised:
        _program.validate(module_params(**{name: value}))
    assert message in str(raised.value)


@given(st.sampled_from([o for o in opts.OPTIONS if o.type == "int"]), st.data())
def test_every_int_inside_its_bounds_is_accepted_and_outside_refused(option, data):
    inside = data.draw(st.integers(option.low, min(option.high, option.low + (1 << 20))))
    if option.power_of_two:
        inside = 1 << (inside.bit_length() - 1) if inside else 1
    params = module_params(**{option.name: inside})
    if option.name == "pressure_warning_percent":
        params["pressure_critical_percent"] = 100
    if option.name == "pressure_critical_percent":
        params["pressure_warning_percent"] = 0
    _program.validate(params)
    outside = data.draw(st.one_of(st.integers(max_value=option.low - 1),
                                  st.integers(min_value=option.high + 1)))
    with pytest.raises(_program.ProgramError) as raised:
        _program.validate(module_params(**{option.name: outside}))
    assert option.name in str(raised.value)

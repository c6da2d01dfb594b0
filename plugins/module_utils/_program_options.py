# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_program's tuning options, one row each: the single place their type, default,
bounds, choices and C macro are written.

The module's argument spec, the compile's -D flags, the default map sizes and the range
checks are built from this table. What cannot be built from it is checked against it by
tests/unit/plugins/module_utils/test_program_options.py: the module's DOCUMENTATION (static
text, read by ansible-doc without running code), the C defaults under `#ifndef MS_...` in
files/bpf, and the role task that passes microseg_program_options through.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from collections import namedtuple

U32_MAX = 0xffffffff
QUOTA_RANGE = "is out of range (0 disables the quota)"


class Option(namedtuple("Option",
                        "name type default low high macro choices power_of_two out_of_range")):
    """One option. low/high bound an int (inclusive); macro is the -D name of a compile-time
    option (a map size: changing it recompiles and migrates the map); choices a str's values;
    out_of_range what the error says of a value outside low..high (default: the bounds)."""

    __slots__ = ()

    def __new__(cls, name, type, default, low=None, high=None, macro=None, choices=None,
                power_of_two=False, out_of_range=None):
        # pylint: disable=redefined-builtin,too-many-arguments
        return super(Option, cls).__new__(cls, name, type, default, low, high, macro, choices,
                                          power_of_two, out_of_range)

    def argument_spec(self):
        spec = {"type": self.type}
        if self.default is not None:
            spec["default"] = self.default
        if self.choices:
            spec["choices"] = list(self.choices)
        return spec


OPTIONS = (
    # Map sizes (entries), the seed's values as defaults: compiled in as -D flags.
    Option("policy_map_size", "int", 100000, 1, 16 * 1024 * 1024, macro="MS_POLICY_MAP_SIZE"),
    Option("range_map_size", "int", 10000, 1, 16 * 1024 * 1024, macro="MS_RANGE_MAP_SIZE"),
    Option("session_map_size", "int", 1000000, 16, 64 * 1024 * 1024,
           macro="MS_SESSION_MAP_SIZE"),
    Option("frag_map_size", "int", 8192, 16, 1024 * 1024, macro="MS_FRAG_MAP_SIZE"),
    Option("rule_stats_size", "int", 65536, 1, 16 * 1024 * 1024, macro="MS_RULE_STATS_SIZE"),
    Option("endpoint_map_size", "int", 4096, 1, 1024 * 1024, macro="MS_ENDPOINT_MAP_SIZE"),
    # The kernel wants a ring buffer of a power-of-two number of pages.
    Option("log_ring_pages", "int", 16, 1, 65536, macro="MS_LOG_RING_PAGES", power_of_two=True),
    # Written to config_map at run time: no recompile.
    Option("syn_flood_threshold", "int", 10000, 0, U32_MAX),
    Option("pressure_warning_percent", "int", 70, 0, 100, out_of_range="is not a percentage"),
    Option("pressure_critical_percent", "int", 90, 0, 100, out_of_range="is not a percentage"),
    Option("degraded_passthrough", "str", "default_only",
           choices=("default_only", "always", "never")),
    Option("endpoint_half_open_quota", "int", 2048, 0, U32_MAX, out_of_range=QUOTA_RANGE),
    # Unset: half of session_map_size (desired_config_fields).
    Option("endpoint_session_quota", "int", None, 0, U32_MAX, out_of_range=QUOTA_RANGE),
    Option("ipv6", "str", "drop", choices=("allow", "drop")),
    Option("other_l3", "str", "drop", choices=("allow", "drop")),
    Option("log_rate", "int", 100, 0, U32_MAX),
)
OPTION = dict((option.name, option) for option in OPTIONS)
COMPILED = tuple(option for option in OPTIONS if option.macro)
DEFAULT_SIZES = dict((option.name, option.default) for option in COMPILED)


def argument_spec():
    return dict((option.name, option.argument_spec()) for option in OPTIONS)


def default(name):
    return OPTION[name].default


def compile_flags(sizes):
    """-D flags for the compiled-in options, in a stable order (part of the cache key)."""
    return ["-D%s=%d" % (option.macro, int(sizes[option.name]))
            for option in sorted(COMPILED, key=lambda o: o.name)]


def range_error(name, value):
    """The message for an int outside its row's bounds, or None when it is inside."""
    option = OPTION[name]
    if option.low <= value <= option.high:
        return None
    said = option.out_of_range or "is out of range (%d..%d)" % (option.low, option.high)
    return "%s: %d %s" % (name, value, said)

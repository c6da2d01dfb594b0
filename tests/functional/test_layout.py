# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_maps.py's ctypes mirrors and _abi.py's constants against files/bpf/microseg.h, as a C
compiler reads it."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.datapath import BPF_DIR

HEADER = os.path.join(BPF_DIR, "microseg.h")


def header_structs():
    """struct name -> [field names] parsed from the header text."""
    with open(HEADER) as handle:
        text = re.sub(r"/\*.*?\*/", "", handle.read(), flags=re.S)
    out = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, flags=re.S):
        out[name] = re.findall(r"(\w+)\s*(?:\[\s*\d+\s*\])?\s*;", body)
    return out


def header_define_names():
    """Every object-like #define of the header but its include guard."""
    with open(HEADER) as handle:
        names = re.findall(r"^#define\s+(\w+)[ \t]+\S", handle.read(), flags=re.M)
    return [name for name in names if name != "MICROSEG_H"]


@pytest.fixture(scope="module")
def c_layout():
    """{struct: (sizeof, {field: offsetof})} printed by a program compiled from the header."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: the layout check cannot run")
    structs = header_structs()
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             '#include "%s"' % HEADER, "int main(void) {"]
    for name in header_define_names():
        lines.append('printf("D %s %%lld\\n", (long long)(%s));' % (name, name))
    for policy_set in (0, 1):
        for direction in (0, 1):
            lines.append('printf("R %d %d %%lld\\n", (long long)MS_LPM_ROOT_CLASS(%d, %d));'
                         % (policy_set, direction, policy_set, direction))
    for name, fields in structs.items():
        lines.append('printf("S %s %%zu\\n", sizeof(struct %s));' % (name, name))
        for field in fields:
            lines.append('printf("F %s %s %%zu\\n", offsetof(struct %s, %s));'
                         % (name, field, name, field))
    lines.append("return 0; }")
    work = tempfile.mkdtemp(prefix="microseg-layout-")
    try:
        src = os.path.join(work, "layout.c")
        with open(src, "w") as handle:
            handle.write("\n".join(lines))
        binary = os.path.join(work, "layout")
        subprocess.check_call([compiler, "-o", binary, src])
        output = subprocess.check_output([binary]).decode()
    finally:
        shutil.rmtree(work)
    layout = {}
    for line in output.splitlines():
        parts = line.split()
        if parts[0] == "D":
            layout.setdefault("#define", {})[parts[1]] = int(parts[2])
        elif parts[0] == "R":
            layout.setdefault("#root", {})[(int(parts[1]), int(parts[2]))] = int(parts[3])
        elif parts[0] == "S":
            layout.setdefault(parts[1], [0, {}])[0] = int(parts[2])
        else:
            layout.setdefault(parts[1], [0, {}])[1][parts[2]] = int(parts[3])
    return layout


def test_every_header_struct_has_a_mirror():
    assert set(header_structs()) == set(_maps.MIRRORS)


@pytest.mark.parametrize("name", sorted(_maps.MIRRORS))
def test_mirror_matches_c_layout(c_layout, name):
    mirror = _maps.MIRRORS[name]
    size, offsets = c_layout[name]
    assert ctypes.sizeof(mirror) == size, "sizeof(struct %s)" % name
    assert [f[0] for f in mirror._fields_] == header_structs()[name]
    for field in mirror._fields_:
        assert getattr(mirror, field[0]).offset == offsets[field[0]], "%s.%s" % (name, field[0])


def test_every_header_constant_is_in_abi_under_its_name(c_layout):
    defines = c_layout["#define"]
    assert len(defines) > 80      # the header was read, not an empty match
    wrong = dict((name, (value, getattr(_abi, name, "missing")))
                 for name, value in defines.items() if getattr(_abi, name, None) != value)
    assert not wrong, "header value vs _abi: %r" % wrong


def test_abi_holds_no_constant_the_header_lacks(c_layout):
    """_abi's own numbers are the header's, or the kernel's protocol numbers."""
    defines = c_layout["#define"]
    own = [name for name in dir(_abi) if name.isupper() and isinstance(getattr(_abi, name), int)]
    extra = [name for name in own if name not in defines and not name.startswith("IPPROTO_")]
    assert extra == []
    for name in ("IPPROTO_ICMP", "IPPROTO_TCP", "IPPROTO_UDP"):
        assert getattr(_abi, name) == getattr(socket, name)


def test_root_class_matches_the_macro(c_layout):
    for (policy_set, direction), value in c_layout["#root"].items():
        assert _abi.ms_lpm_root_class(policy_set, direction) == value


def test_tables_follow_the_header_numbering(c_layout):
    defines = c_layout["#define"]
    assert [defines["STAT_" + name.upper()] for name in _abi.STAT_NAMES] == \
        list(range(defines["STAT_MAX"]))
    assert [defines["TCP_" + state] for state in _abi.TCP_STATES] == \
        list(range(defines["TCP_STATE_MAX"]))
    for name, value in _abi.DIRECTIONS.items():
        assert defines["MS_DIR_" + name.upper()] == value
    for table, prefix in ((_abi.ACTIONS, "MS_ACTION_"), (_abi.L3_MODES, "MS_L3_"),
                          (_abi.PASSTHROUGH_MODES, "MS_PASSTHROUGH_")):
        assert dict((name, defines[prefix + name.upper()]) for name in table) == table
    assert [defines["PRESSURE_" + level.upper()] for level in _abi.PRESSURE_LEVELS] == [0, 1, 2]
    assert dict((defines["LOG_REASON_" + name.upper()], name)
                for name in _abi.LOG_REASONS.values()) == _abi.LOG_REASONS
    for table in (_abi.DIRECTION_NAMES, _abi.ACTION_NAMES, _abi.L3_MODE_NAMES,
                  _abi.PASSTHROUGH_MODE_NAMES, _abi.PROTOCOL_NAMES):
        assert len(set(table.values())) == len(table)

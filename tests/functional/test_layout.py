# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ctypes mirrors in _maps.py against files/bpf/microseg.h, as a C compiler lays it out."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import os
import re
import shutil
import subprocess
import tempfile

import pytest

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


def header_defines():
    with open(HEADER) as handle:
        return dict((k, int(v, 0)) for k, v in
                    re.findall(r"#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", handle.read()))


@pytest.fixture(scope="module")
def c_layout():
    """{struct: (sizeof, {field: offsetof})} printed by a program compiled from the header."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: the layout check cannot run")
    structs = header_structs()
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             '#include "%s"' % HEADER, "int main(void) {"]
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
        if parts[0] == "S":
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


def test_constants_match_header():
    defines = header_defines()
    for name, index in _maps.STAT.items():
        assert defines["STAT_" + name.upper()] == index
    assert defines["STAT_MAX"] == _maps.STAT_MAX
    for index, state in enumerate(_maps.TCP_STATES):
        assert defines["TCP_" + state] == index
    assert defines["MS_DIR_EGRESS"] == _maps.DIR_EGRESS
    assert defines["MS_DIR_INGRESS"] == _maps.DIR_INGRESS
    for name, value in _maps.ACTIONS.items():
        assert defines["MS_ACTION_" + name.upper()] == value
    assert defines["RANGE_FLAG_FINAL"] == _maps.RANGE_FLAG_FINAL
    assert defines["MS_LPM_CLASS_BITS"] == _maps.LPM_CLASS_BITS
    assert defines["MS_LPM_PROTOCOL_BITS"] == _maps.LPM_PROTOCOL_BITS
    assert defines["SESSION_FLAG_PICKUP"] == _maps.SESSION_FLAG_PICKUP
    assert defines["SESSION_FLAG_SYN_COUNTED"] == _maps.SESSION_FLAG_SYN_COUNTED


def test_flag_and_mode_constants_match_header():
    defines = header_defines()
    assert defines["MS_CFG_ANTISPOOF"] == _maps.CONFIG_FLAG_ANTISPOOF
    assert defines["SESSION_FLAG_EP_SYN_COUNTED"] == _maps.SESSION_FLAG_EP_SYN_COUNTED
    assert defines["ENDPOINT_FLAG_MAC"] == _maps.ENDPOINT_FLAG_MAC
    assert defines["ENDPOINT_FLAG_LEARNED"] == _maps.ENDPOINT_FLAG_LEARNED
    assert defines["MS_CFG_LEARN_ENDPOINTS"] == _maps.CONFIG_FLAG_LEARN_ENDPOINTS
    for name, value in _maps.PASSTHROUGH_MODES.items():
        assert defines["MS_PASSTHROUGH_" + name.upper()] == value

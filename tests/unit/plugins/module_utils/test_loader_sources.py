# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The program's sources: which files ship, and the one text BCC is given."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _loader

BPF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..",
                       "files", "bpf")


def test_the_shipped_sources_are_every_c_file_and_header_under_files_bpf():
    names = _loader.source_names(BPF_DIR)
    assert names == sorted(names)
    assert "microseg.bpf.c" in names and "microseg.h" in names
    assert "lib/session.h" in names
    assert all(n.endswith((".c", ".h")) for n in names)
    assert set(_loader.read_sources(BPF_DIR)) == set(names)


def test_every_include_of_the_program_is_spliced_once_and_none_is_left():
    flat = _loader.flatten_sources(_loader.read_sources(BPF_DIR))
    assert '#include "' not in flat
    for name in _loader.source_names(BPF_DIR):
        assert flat.count('#line 1 "%s"' % name) == 1, name


def test_splicing_keeps_line_numbers_and_resolves_like_the_compiler():
    sources = {
        "microseg.bpf.c": '#include <uapi/linux/bpf.h>\n#include "lib/a.h"\nint main_line3;\n',
        "lib/a.h": '#include "b.h"\n#include "top.h"\nint a_line3;\n',
        "lib/b.h": '#include "../top.h"\nint b_line2;\n',
        "top.h": "int top_line1;\n",
    }
    flat = _loader.flatten_sources(sources).splitlines()
    assert flat == [
        '#line 1 "microseg.bpf.c"', "#include <uapi/linux/bpf.h>",
        '#line 1 "lib/a.h"',
        '#line 1 "lib/b.h"', '#line 1 "top.h"', "int top_line1;", '#line 2 "lib/b.h"',
        "int b_line2;", '#line 2 "lib/a.h"',
        "", "int a_line3;", '#line 3 "microseg.bpf.c"',
        "int main_line3;",
    ]


def test_an_include_cycle_ends():
    flat = _loader.flatten_sources({"microseg.bpf.c": '#include "x.h"\n',
                                    "x.h": '#include "microseg.bpf.c"\nint x;\n'})
    assert flat.count("int x;") == 1


def test_sources_without_the_program_are_refused():
    with pytest.raises(_loader.LoaderError):
        _loader.flatten_sources({"microseg.h": ""})


@pytest.mark.parametrize("name", ["../x.h", "/etc/x.h", "lib/../../x.h", "lib//x.h", "", "a\\b.h"])
def test_a_source_name_outside_the_work_directory_is_refused(name):
    with pytest.raises(_loader.LoaderError):
        _loader._source_path("/tmp/w", name)


def test_a_source_name_below_the_work_directory_is_kept():
    assert _loader._source_path("/tmp/w", "lib/parse.h") == os.path.join("/tmp/w", "lib", "parse.h")

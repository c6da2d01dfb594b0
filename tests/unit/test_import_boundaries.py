# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may import whom among tests/ and bench/ (read from the sources with ast, nothing is
imported).

What tests and bench share lives in tests/harness/. So:
- bench/ imports neither tests/functional, tests/unit nor plugins/modules (module code is
  not a library; module_utils is);
- nothing under tests/ imports bench/, and no file imports a test file (test_*.py) or
  conftest.py: a test file exports nothing;
- tests/harness/ imports neither tests/functional nor tests/unit (it is below them).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "ansible_collections.ebpf.microseg"


def python_files(root, top):
    out = []
    for base, dirs, files in os.walk(os.path.join(root, top)):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "output"))
        out.extend(os.path.join(base, name) for name in sorted(files) if name.endswith(".py"))
    return out


def imported_names(path):
    """(line, dotted name) of every import in the file, at any depth; for `from M import a`
    both M and M.a (a may be a module)."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out.extend((node.lineno, node.module + "." + alias.name) for alias in node.names)
    return sorted(out, key=lambda entry: entry[0])


def _within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def _collection_part(name):
    """The path inside the collection a name refers to ("tests.functional.netlab"), or None."""
    if _within(name, PACKAGE):
        return name[len(PACKAGE) + 1:]
    return None


def _test_file(part):
    return any(piece.startswith("test_") or piece == "conftest" for piece in part.split("."))


def violations(root=ROOT):
    found = []
    seen = set()

    def report(rel, line, name, why):
        if (rel, line, why) not in seen:   # `from M import a, b`: one line, one report
            seen.add((rel, line, why))
            found.append("%s:%d imports %s (%s)" % (rel, line, name, why))

    def check(path, forbidden, no_test_files):
        rel = os.path.relpath(path, root)
        for line, name in imported_names(path):
            part = _collection_part(name)
            if part is None:
                continue
            for prefix, why in forbidden:
                if _within(part, prefix):
                    report(rel, line, name, why)
            if no_test_files and _test_file(part):
                report(rel, line, name, "a test file exports nothing: move it to tests/harness")

    for path in python_files(root, "bench"):
        check(path, [("tests.functional", "bench takes test helpers from tests.harness"),
                     ("tests.unit", "bench takes test helpers from tests.harness"),
                     ("plugins.modules", "bench uses module_utils, not module code")],
              no_test_files=True)
    for path in python_files(root, "tests"):
        rules = [("bench", "tests do not import bench: shared code goes to tests.harness")]
        if os.path.relpath(path, root).startswith(os.path.join("tests", "harness") + os.sep):
            rules += [("tests.functional", "the harness is below the tests"),
                      ("tests.unit", "the harness is below the tests")]
        check(path, rules, no_test_files=True)
    return found


def test_rules_see_every_import_form(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "tests" / "harness").mkdir(parents=True)
    (tmp_path / "tests" / "functional").mkdir()
    (tmp_path / "bench" / "b.py").write_text(
        "from ansible_collections.ebpf.microseg.tests.functional import netlab\n"
        "from ansible_collections.ebpf.microseg.plugins.modules.microseg_program import x\n"
        "def f():\n"
        "    import ansible_collections.ebpf.microseg.tests.unit.plugins\n"
        "from ansible_collections.ebpf.microseg.tests.harness import datapath\n"
        "from ansible_collections.ebpf.microseg.plugins.module_utils import _maps\n")
    (tmp_path / "tests" / "functional" / "test_a.py").write_text(
        "from ansible_collections.ebpf.microseg.tests.functional import test_b\n"
        "from ansible_collections.ebpf.microseg import bench\n"
        "from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab\n")
    (tmp_path / "tests" / "harness" / "h.py").write_text(
        "from ansible_collections.ebpf.microseg.tests.unit.plugins.module_utils import x\n"
        "from ansible_collections.ebpf.microseg.tests.harness import packets\n")
    found = violations(str(tmp_path))
    assert [entry.split(" (")[0] for entry in found] == [
        "bench/b.py:1 imports ansible_collections.ebpf.microseg.tests.functional",
        "bench/b.py:2 imports ansible_collections.ebpf.microseg.plugins.modules.microseg_program",
        "bench/b.py:4 imports ansible_collections.ebpf.microseg.tests.unit.plugins",
        "tests/functional/test_a.py:1 imports ansible_collections.ebpf.microseg.tests.functional.test_b",
        "tests/functional/test_a.py:2 imports ansible_collections.ebpf.microseg.bench",
        "tests/harness/h.py:1 imports ansible_collections.ebpf.microseg.tests.unit.plugins.module_utils",
    ]


def test_tests_and_bench_keep_their_import_boundaries():
    assert python_files(ROOT, "bench") and python_files(ROOT, os.path.join("tests", "harness"))
    found = violations()
    assert not found, "import boundaries broken:\n" + "\n".join(found)

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operator reads (issue 23), through the real modules and the role.

The role's validate.yml refuses a bad policy with every problem, named as written in the
inventory (microseg_host_rules[0]); the three modules run as an unprivileged user fail at
once with "needs root (become: true)", except microseg_policy state=rendered. Nothing here
touches a pin, a lock or an interface; the temporary directory is removed.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import (
    collections_path, run_playbook)

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "plugins", "modules")
USER = "nobody"
GOOD = {"name": "web-to-db", "direction": "egress", "src": ["web"], "dst": ["db"],
        "protocol": "tcp", "dst_ports": [5432], "action": "allow"}
SEGMENTS = {"web": ["198.18.1.0/24"], "db": ["198.18.2.10/32"]}


def test_the_role_validates_before_changing_the_host_and_names_the_inventory_variable():
    variables = {
        "microseg_segments": SEGMENTS,
        "microseg_rules": [GOOD, dict(GOOD, name="b", dst_ports=[1])],
        "microseg_group_rules": [dict(GOOD, name="web-to-db", action="deny")],
        "microseg_host_rules": [{"direction": "egress", "action": "allow"},
                                {"name": ["x"], "action": "allow"},
                                dict(GOOD, name="pg", dst_ports=["5432/tcp"])],
        # Would be the first host change if validation let the play through.
        "microseg_pin_path": "/nonexistent/microseg-validate",
    }
    task = {"ansible.builtin.include_role": {"name": "ebpf.microseg.microseg",
                                             "tasks_from": "validate.yml"},
            "vars": variables}
    result = run_playbook([task])
    assert result.rc != 0
    failed = [t for t in result.tasks() if t.get("failed")]
    assert len(failed) == 1, result.stdout
    assert failed[0]["errors"] == [
        "rule 'web-to-db' (microseg_group_rules[0]): name: the same name as microseg_rules[0] "
        "(names must be unique)",
        "rule microseg_host_rules[0]: name: is required (a non-empty string)",
        "rule microseg_host_rules[1]: name ['x']: must be a non-empty string (got a list)",
        "rule 'pg' (microseg_host_rules[2]): dst_ports[0] '5432/tcp': not a port or a low-high "
        "range (the protocol goes in its own field - protocol tcp, dst_ports [5432])"]
    assert failed[0]["msg"].startswith("4 errors in the policy, nothing was changed: ")


def test_the_role_validation_passes_a_good_policy_in_check_mode():
    task = {"ansible.builtin.include_role": {"name": "ebpf.microseg.microseg",
                                             "tasks_from": "validate.yml"},
            "vars": {"microseg_segments": SEGMENTS, "microseg_host_rules": [GOOD]}}
    result = run_playbook([task], check=True)
    assert result.rc == 0, result.stdout
    ran = [t for t in result.tasks() if "rendered" in t]
    assert len(ran) == 1 and ran[0]["changed"] is False


@pytest.fixture(scope="module")
def unprivileged():
    """run(module, args) -> the module's JSON result, run as an unprivileged user."""
    if not shutil.which("runuser"):
        pytest.skip("runuser is not installed")
    probe = subprocess.run(["runuser", "-u", USER, "--", sys.executable, "-c",
                            "import os, sys; sys.exit(os.geteuid() == 0)"], check=False)
    if probe.returncode != 0:
        pytest.skip("cannot run as %s" % USER)
    work = tempfile.mkdtemp(prefix="microseg-nonroot-")
    os.chmod(work, 0o755)

    def run(module, args):
        path = os.path.join(work, "%s.json" % module)
        with open(path, "w") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
        os.chmod(path, 0o644)
        proc = subprocess.run(
            ["runuser", "-u", USER, "--", "env", "PYTHONPATH=" + collections_path(),
             "PYTHONDONTWRITEBYTECODE=1", sys.executable,
             os.path.join(MODULES, module + ".py"), path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            cwd=work, check=False)
        try:
            return json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            raise AssertionError("%s printed no JSON:\n%s\n%s" % (module, proc.stdout,
                                                                  proc.stderr))
    try:
        yield run
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("module,args", [
    ("microseg_policy", {"rules": [GOOD], "segments": SEGMENTS, "state": "overridden"}),
    ("microseg_policy", {"state": "gathered"}),
    ("microseg_policy", {"rules": [GOOD], "segments": SEGMENTS, "_ansible_check_mode": True}),
    ("microseg_facts", {}),
    ("microseg_program", {"state": "absent"}),
])
def test_without_root_each_module_fails_at_once_saying_so(unprivileged, module, args):
    result = unprivileged(module, args)
    assert result.get("failed") is True, result
    assert result["msg"].startswith("%s needs root (become: true): it runs as user %s "
                                    % (module, USER)), result["msg"]
    assert "Errno" not in result["msg"] and "BPF_OBJ_GET" not in result["msg"]


def test_without_root_rendered_works_and_reports_every_problem(unprivileged):
    good = unprivileged("microseg_policy", {"rules": [GOOD], "segments": SEGMENTS,
                                            "state": "rendered"})
    assert not good.get("failed") and good["rendered"]["port_range_map"], good
    nameless = {"name": ["a"], "action": "allow"}
    bad = unprivileged("microseg_policy", {"rules": [GOOD, nameless], "segments": SEGMENTS,
                                           "state": "rendered"})
    assert bad["failed"] is True
    assert bad["errors"] == ["rule rules[1]: name ['a']: must be a non-empty string "
                             "(got a list)"]

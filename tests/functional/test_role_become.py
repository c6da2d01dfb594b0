# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The roles are become-safe: controller-side tasks never escalate on the controller.

A play run with become (-b, AWX privilege escalation) escalates every task, delegated ones
included, unless the task says `become: false`; on a controller without sudo that fails.
Statically: every task of every role (tasks/ and handlers/, blocks walked recursively) that
runs on the controller (delegate_to localhost, local_action, connection local) sets
`become: false`. Then for real: the role's own controller-side tasks run in a play with
become on and a become executable that does not exist; they must succeed, and the same task
without its `become: false` must fail (so the run did exercise escalation).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import copy
import os
import shutil
import tempfile

import yaml

from ansible_collections.ebpf.microseg.tests.harness import ansible_runner

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROLES = os.path.join(ROOT, "roles")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
BLOCK_KEYS = ("block", "rescue", "always")


def role_task_files():
    found = []
    for dirpath, _dirs, files in os.walk(ROLES):
        if os.path.basename(dirpath) not in ("tasks", "handlers"):
            continue
        found.extend(os.path.join(dirpath, name) for name in sorted(files)
                     if name.endswith((".yml", ".yaml")))
    return sorted(found)


def walk_tasks(tasks, where):
    """(location, task) for every task, blocks and their rescue/always walked recursively."""
    for index, task in enumerate(tasks or []):
        assert isinstance(task, dict), "%s[%d] is not a mapping" % (where, index)
        here = "%s[%d] %s" % (where, index, task.get("name", "(unnamed)"))
        yield here, task
        for key in BLOCK_KEYS:
            if key in task:
                yield from walk_tasks(task[key], "%s.%s" % (here, key))


def runs_on_controller(task):
    if "local_action" in task:
        return True
    if str(task.get("delegate_to", "")).strip() in LOCAL_NAMES:
        return True
    return str(task.get("connection", "")).strip() == "local"


def controller_tasks():
    out = []
    for path in role_task_files():
        with open(path) as handle:
            tasks = yaml.safe_load(handle)
        for where, task in walk_tasks(tasks, os.path.relpath(path, ROOT)):
            if runs_on_controller(task) and not any(key in task for key in BLOCK_KEYS):
                out.append((path, where, task))
    return out


def test_walker_finds_nested_controller_tasks():
    tasks = [{"name": "outer", "block": [
        {"name": "a", "ansible.builtin.command": "true", "delegate_to": "localhost"},
        {"name": "inner", "block": [{"name": "b", "local_action": "command true"}],
         "rescue": [{"name": "c", "ansible.builtin.debug": {}}],
         "always": [{"name": "d", "ansible.builtin.debug": {}, "delegate_to": "127.0.0.1"}]}]}]
    names = [task["name"] for _where, task in walk_tasks(tasks, "x") if runs_on_controller(task)]
    assert names == ["a", "b", "d"]


def test_every_controller_side_task_sets_become_false():
    files = role_task_files()
    assert os.path.join(ROLES, "microseg", "tasks", "monitor.yml") in files
    found = controller_tasks()
    # The role has at least its bundling task on the controller: the walk is not vacuous.
    assert any("Bundle the collection code" in where for _path, where, _task in found), found
    wrong = [where for _path, where, task in found if task.get("become") is not False]
    assert wrong == [], "controller-side tasks without `become: false`: %s" % wrong


def _runnable(task, bundle):
    """The role's task as a play task: the role's variables it templates (its defaults,
    role_path, the bundle path), given."""
    task = copy.deepcopy(task)
    with open(os.path.join(ROLES, "microseg", "defaults", "main.yml")) as handle:
        variables = yaml.safe_load(handle)
    variables.update(task.get("vars", {}))
    variables.update({
        "role_path": os.path.join(ROLES, "microseg"),
        "microseg_monitor_bundle": bundle,
    })
    task["vars"] = variables
    return task


def test_controller_tasks_run_under_become_without_sudo():
    found = [(where, task) for path, where, task in controller_tasks()
             if path.startswith(os.path.join(ROLES, "microseg") + os.sep)]
    assert found
    work = tempfile.mkdtemp(prefix="microseg-become-")
    try:
        bundle = os.path.join(work, "bundle.zip")
        # -b on a controller without sudo: become on, the become executable missing, and a
        # become user other than the one running (ansible skips becoming the same user).
        env = {"ANSIBLE_BECOME": "True", "ANSIBLE_BECOME_METHOD": "sudo",
               "ANSIBLE_BECOME_USER": "nobody",
               "ANSIBLE_BECOME_EXE": os.path.join(work, "no-such-sudo")}
        tasks = [_runnable(task, bundle) for _where, task in found]
        result = ansible_runner.run_playbook(tasks, extra_env=env)
        assert result.rc == 0, "%s\n%s" % (result.stdout, result.stderr)
        assert [t.get("failed", False) for t in result.tasks()] == [False] * len(tasks)
        assert os.path.getsize(bundle) > 0

        # Control: without `become: false` the same task escalates and fails.
        escalating = _runnable(found[0][1], bundle)
        del escalating["become"]
        control = ansible_runner.run_playbook([escalating], extra_env=env)
        assert control.rc != 0
        assert control.task(0).get("failed") or control.task(0).get("unreachable"), control.stdout
        assert "no-such-sudo" in control.stdout + control.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)

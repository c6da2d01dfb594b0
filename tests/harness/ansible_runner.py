# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run real ansible-playbook against localhost and return per-task results."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ansible_collections

CALLBACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins")


def collections_path():
    return os.path.dirname(list(ansible_collections.__path__)[0])


def ansible_bin(name):
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else shutil.which(name)


class PlaybookResult:
    def __init__(self, rc, data, stdout, stderr, seconds):
        self.rc = rc
        self.data = data
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds

    def tasks(self):
        out = []
        for play in self.data.get("plays", []):
            for task in play["tasks"]:
                out.append(task["hosts"].get("localhost", {}))
        return out

    def task(self, index=0):
        return self.tasks()[index]


def _env(work, extra_env=None):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": collections_path(),
        "ANSIBLE_STDOUT_CALLBACK": "microseg_test_json",
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACK_DIR,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": work,
    })
    env.update(extra_env or {})
    return env


def _parse(proc, seconds):
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        raise AssertionError("ansible printed no JSON (rc %d):\n%s\n%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return PlaybookResult(proc.returncode, data, proc.stdout, proc.stderr, seconds)


def run_adhoc(module, args, check=False, extra_env=None):
    """`ansible localhost -m module -a args`, as an operator would type it."""
    work = tempfile.mkdtemp(prefix="microseg-adhoc-")
    try:
        cmd = [ansible_bin("ansible"), "localhost", "-i", "localhost,", "-c", "local",
               "-m", module, "-a", args]
        if check:
            cmd.append("--check")
        started = time.time()
        proc = subprocess.run(cmd, env=_env(work, extra_env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, cwd=work,
                              check=False)
        return _parse(proc, time.time() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_playbook(tasks, check=False, diff=False, extra_env=None):
    """Run `tasks` as a localhost play with the json callback."""
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    work = tempfile.mkdtemp(prefix="microseg-play-")
    try:
        path = os.path.join(work, "play.yml")
        with open(path, "w") as handle:
            json.dump(play, handle)   # JSON is YAML
        env = _env(work, extra_env)
        cmd = [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", path]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        started = time.time()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, cwd=work, check=False)
        return _parse(proc, time.time() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)

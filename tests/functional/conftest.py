# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import shutil
import subprocess
import tempfile

import pytest

from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath, pin_prefix


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="real-kernel tests need root")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def datapath_session():
    dp = Datapath()
    try:
        yield dp
    finally:
        dp.close()


@pytest.fixture
def dp(datapath_session):
    """The shared compiled program with every map emptied and the config reset."""
    datapath_session.reset()
    return datapath_session


HOST_STATE_DIR = "/var/lib/microseg/instances"


def _leftovers():
    records = set(os.listdir(HOST_STATE_DIR)) if os.path.isdir(HOST_STATE_DIR) else set()
    pins = set(n for n in os.listdir("/sys/fs/bpf") if n.startswith(pin_prefix())) \
        if os.path.isdir("/sys/fs/bpf") else set()
    netns = set(subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                               universal_newlines=True, check=False).stdout.split())
    links = set(line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
        ["ip", "-o", "link", "show"], stdout=subprocess.PIPE, universal_newlines=True,
        check=False).stdout.splitlines())
    return pins, _ours(netns), _ours(links), records


def _ours(names):
    """Test objects are named ms<random>...; the demo's msd-* are not the tests' business."""
    return set(n for n in names if n.startswith("ms") and not n.startswith("msd-"))


_BEFORE = {}


def pytest_sessionstart(session):
    if os.geteuid() == 0:
        _BEFORE["state"] = _leftovers()
    # The modules record what they converged for the boot restore (_saved_state.py); the
    # tests' records go here (MICROSEG_STATE_DIR is the modules' default), not into this
    # machine's /var/lib/microseg, and are removed with it.
    if not os.environ.get("MICROSEG_STATE_DIR"):
        _BEFORE["state_dir"] = tempfile.mkdtemp(prefix="microseg-test-state-")
        os.environ["MICROSEG_STATE_DIR"] = _BEFORE["state_dir"]


def pytest_sessionfinish(session, exitstatus):
    """Every test cleans up what it creates: pins, namespaces, links.

    Checked here, after every fixture's teardown (a session fixture cannot see the others
    go), and a leak fails the run.
    """
    if "state_dir" in _BEFORE:
        shutil.rmtree(_BEFORE.pop("state_dir"), ignore_errors=True)
        del os.environ["MICROSEG_STATE_DIR"]
    if "state" not in _BEFORE:
        return
    after = _leftovers()
    leaked = [sorted(a - b) for a, b in zip(after, _BEFORE["state"])]
    if any(leaked):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "left behind: pins %s, netns %s, links %s, records in %s: %s" % (
            leaked[0], leaked[1], leaked[2], HOST_STATE_DIR, leaked[3])
        if reporter:
            reporter.write_line("FAILED cleanup check: " + message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

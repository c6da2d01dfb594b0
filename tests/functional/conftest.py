# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import subprocess

import pytest

from ansible_collections.ebpf.microseg.tests.functional.datapath import Datapath, pin_prefix


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


def _leftovers():
    pins = set(n for n in os.listdir("/sys/fs/bpf") if n.startswith(pin_prefix())) \
        if os.path.isdir("/sys/fs/bpf") else set()
    netns = set(subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                               universal_newlines=True, check=False).stdout.split())
    links = set(line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
        ["ip", "-o", "link", "show"], stdout=subprocess.PIPE, universal_newlines=True,
        check=False).stdout.splitlines())
    return pins, _ours(netns), _ours(links)


def _ours(names):
    """Test objects are named ms<random>...; the demo's msd-* are not the tests' business."""
    return set(n for n in names if n.startswith("ms") and not n.startswith("msd-"))


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """Every test cleans up what it creates: pins, namespaces, links. Checked at the end."""
    if os.geteuid() != 0:
        yield
        return
    before = _leftovers()
    yield
    after = _leftovers()
    leaked = [sorted(a - b) for a, b in zip(after, before)]
    assert not any(leaked), "left behind: pins %s, netns %s, links %s" % tuple(leaked)

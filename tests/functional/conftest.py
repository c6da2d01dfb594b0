# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

import pytest

from ansible_collections.ebpf.microseg.tests.functional.datapath import Datapath


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

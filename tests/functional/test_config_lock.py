# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_program's config write waits for the host lock a converge holds, so it cannot
write back a policy epoch read before the converge flipped it (issue 15's race)."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import collections_path
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath

# A program run that only rewrites its config fields: _program.apply, the module's own path.
PROGRAM_RUN = textwrap.dedent("""
    import sys
    from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink, _program
    from ansible_collections.ebpf.microseg.plugins.modules.microseg_program import argument_spec
    pin = sys.argv[1]
    params = dict((name, spec.get("default")) for name, spec in argument_spec().items())
    params.update(pin_path=pin, syn_flood_threshold=4321)
    sizes = _program.validate(params)
    ipr = _netlink.open_route()
    try:
        _program.apply(params, {}, {"links": [], "meta": {}}, [{"action": "write_config"}],
                       sizes, None, ipr)
    finally:
        ipr.close()
    print("written", flush=True)
""")


@pytest.fixture
def dp():
    datapath = Datapath()
    try:
        _loader.pin_programs(datapath.fds, datapath.pin_path, "")
        yield datapath
    finally:
        datapath.close()


def test_program_config_write_waits_for_a_converge_and_keeps_its_epoch(dp):
    start = dp.config().policy_epoch
    with _converge.HostLock(dp.pin_path):
        writer = subprocess.Popen([sys.executable, "-c", PROGRAM_RUN, dp.pin_path],
                                  stdout=subprocess.PIPE, universal_newlines=True,
                                  env={"PYTHONPATH": collections_path()})
        try:
            time.sleep(1.0)
            assert writer.poll() is None, "the program run did not wait for the lock"
            # The converge flips the policy while the program run waits.
            dp.bump_epoch()
        except Exception:
            writer.kill()
            raise
    assert writer.communicate(timeout=30)[0].strip() == "written"
    config = dp.config()
    assert config.policy_epoch == start + 1
    assert config.syn_flood_threshold == 4321

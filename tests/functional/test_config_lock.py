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
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import collections_path
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath

# microseg_program runs that only rewrite their config fields, through _program.apply (the
# module's own path): run i writes syn_flood_threshold = first + i.
PROGRAM_RUNS = textwrap.dedent("""
    import sys
    from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink, _program
    from ansible_collections.ebpf.microseg.plugins.modules.microseg_program import argument_spec
    pin, runs, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    params = dict((name, spec.get("default")) for name, spec in argument_spec().items())
    params.update(pin_path=pin)
    ipr = _netlink.open_route()
    try:
        for i in range(runs):
            params["syn_flood_threshold"] = first + i
            sizes = _program.validate(params)
            config_only = _program.ProgramPlan(pin)
            config_only.add("write_config")
            config_only.want_config = _program.desired_config_fields(params, sizes)
            _program.apply(params, {}, {"links": [], "meta": {}}, config_only, sizes, None, ipr)
    finally:
        ipr.close()
    print("written", runs, flush=True)
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
        writer = subprocess.Popen([sys.executable, "-c", PROGRAM_RUNS, dp.pin_path, "1", "4321"],
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
    assert writer.communicate(timeout=30)[0].strip() == "written 1"
    config = dp.config()
    assert config.policy_epoch == start + 1
    assert config.syn_flood_threshold == 4321


# Both sides of the race as loops in their own processes: microseg_program's config write
# (PROGRAM_RUNS from 1000) and microseg_policy's converge of two documents in turn (every
# converge switches the policy set and the epoch).
POLICY_LOOP = textwrap.dedent("""
    import sys
    from ansible_collections.ebpf.microseg.plugins.module_utils import _maps, _policy
    pin, runs = sys.argv[1], int(sys.argv[2])
    lost = []
    for i in range(runs):
        params = {"pin_path": pin, "state": "overridden", "state_dir": "", "rule_sources": None,
                  "segments": {}, "default_action": {"egress": "deny", "ingress": "deny"},
                  "rules": [{"name": "run-%d" % (i % 2), "direction": "egress",
                             "src": ["198.18.106.10/32"], "dst": ["198.18.106.20/32"],
                             "protocol": "tcp", "dst_ports": [5000 + i % 2],
                             "action": "allow"}]}
        result = _policy.run(params, False, False)
        with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
            epoch = pinned.config().policy_epoch
        if epoch != result["generation"]:
            lost.append((i, result["generation"], epoch))
    print("converged", runs, "lost", lost, flush=True)
""")


def test_fifty_concurrent_program_runs_and_converges_lose_no_epoch(dp):
    runs = 50
    start = dp.config().policy_epoch
    env = {"PYTHONPATH": collections_path()}
    # The program side writes far more often than a converge takes, so that every
    # converge's switch lands inside some program run's read-modify-write if nothing
    # orders them (without the lock, most converges lose their epoch).
    writes = runs * 40
    procs = [subprocess.Popen([sys.executable, "-c", code, dp.pin_path] + args,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env)
             for code, args in ((PROGRAM_RUNS, [str(writes), "1000"]),
                                (POLICY_LOOP, [str(runs)]))]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert outputs[0][0].split() == ["written", str(writes)]
    assert outputs[1][0].strip() == "converged %d lost []" % runs, outputs[1][0]
    config = dp.config()
    # Every converge's epoch stayed, none was written back by a program run; the program's
    # last write stayed too.
    assert config.policy_epoch == start + runs
    assert config.syn_flood_threshold == 1000 + writes - 1
    gathered = _policy_gathered(dp.pin_path)
    assert [r["name"] for r in gathered["rules"]] == ["run-%d" % ((runs - 1) % 2)]


def _policy_gathered(pin_path):
    return _policy.run({"pin_path": pin_path, "state": "gathered", "state_dir": "",
                        "rules": [], "rule_sources": None, "segments": None,
                        "default_action": None}, False, False)["gathered"]

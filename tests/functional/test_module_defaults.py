# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`module_defaults: group/ebpf.microseg.microseg` reaches all three modules (meta/runtime.yml
action_groups), the action plugin of microseg_program included."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path


def test_one_pin_path_for_every_module_of_the_group():
    pin = new_pin_path("defaults")      # never created: every module must look there
    block = {
        "module_defaults": {"group/ebpf.microseg.microseg": {"pin_path": pin}},
        "block": [
            {"ebpf.microseg.microseg_facts": {}},
            {"ebpf.microseg.microseg_program": {"state": "absent"}},
            {"ebpf.microseg.microseg_policy": {"state": "gathered"}},
        ]}
    ran = run_playbook([block], check=True)
    facts, program, policy = ran.tasks()
    assert facts["ansible_facts"]["microseg"]["pin_path"] == pin, facts
    assert program["pin_path"] == pin and program["changed"] is False, program
    # Nothing is pinned there: the empty policy, with a warning naming the pin path.
    assert policy["gathered"]["rules"] == [] and not policy.get("failed"), policy
    assert pin in " ".join(policy.get("warnings", [])), policy
    assert not os.path.exists(pin)

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Copyright: ebpf.microseg contributors
"""Without root the modules fail at once saying so, before a lock or a pin is opened;
microseg_policy state=rendered needs no root."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _privilege
from ansible_collections.ebpf.microseg.plugins.modules import microseg_facts
from ansible_collections.ebpf.microseg.plugins.modules import microseg_policy
from ansible_collections.ebpf.microseg.plugins.modules import microseg_program


@pytest.fixture
def not_root(monkeypatch):
    """Runs as uid 4242; opening a lock or a pin would fail the test."""
    monkeypatch.setattr(_privilege.os, "geteuid", lambda: 4242)

    def touched(*_args, **_kwargs):
        raise AssertionError("touched the host without root")
    monkeypatch.setattr(_converge, "HostLock", touched)
    monkeypatch.setattr(_maps, "PinnedMaps", touched)


def run_main(main, args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            main()
    return json.loads(capsys.readouterr().out)


def test_root_problem_is_none_for_root(monkeypatch):
    monkeypatch.setattr(_privilege.os, "geteuid", lambda: 0)
    assert _privilege.root_problem("microseg_facts", "it reads maps") is None


def test_root_problem_says_what_to_do(not_root):
    text = _privilege.root_problem("microseg_facts", "it reads the pinned maps")
    assert text.startswith("microseg_facts needs root (become: true): it runs as user ")
    assert "(uid 4242)" in text and "it reads the pinned maps" in text


@pytest.mark.parametrize("main,args", [
    (microseg_policy.main, {"rules": [], "state": "overridden", "pin_path": "/nonexistent"}),
    (microseg_policy.main, {"state": "gathered"}),
    (microseg_facts.main, {"pin_path": "/nonexistent"}),
    (microseg_program.main, {"state": "absent", "pin_path": "/nonexistent"}),
])
def test_each_module_fails_at_once_without_root(not_root, capsys, main, args):
    result = run_main(main, args, capsys)
    assert result["failed"] is True and result["changed"] is False
    assert "needs root (become: true)" in result["msg"], result["msg"]
    assert "Errno" not in result["msg"]


def test_policy_check_mode_without_root_fails_too(not_root, capsys):
    args = {"rules": [], "state": "merged", "_ansible_check_mode": True}
    assert "needs root (become: true)" in run_main(microseg_policy.main, args, capsys)["msg"]


def test_rendered_needs_no_root(not_root, capsys):
    args = {"rules": [{"name": "a", "protocol": "tcp", "dst_ports": [80], "action": "allow"}],
            "state": "rendered", "pin_path": "/nonexistent"}
    result = run_main(microseg_policy.main, args, capsys)
    assert not result.get("failed") and result["rendered"]["port_range_map"]


def test_rendered_without_root_still_lists_every_problem(not_root, capsys):
    args = {"rules": [{"name": "a", "action": "allow"}, {"name": ["a"], "action": "allow"},
                      {"name": "web-to-db", "dst_ports": ["5432/tcp"], "action": "allow"}],
            "rule_sources": [{"name": "microseg_rules", "count": 1},
                             {"name": "microseg_host_rules", "count": 2}],
            "state": "rendered"}
    result = run_main(microseg_policy.main, args, capsys)
    assert result["failed"] is True
    assert result["errors"] == [
        "rule microseg_host_rules[0]: name ['a']: must be a non-empty string (got a list)",
        "rule 'web-to-db' (microseg_host_rules[1]): dst_ports ['5432/tcp']: ports need "
        "protocol tcp or udp, not any",
        "rule 'web-to-db' (microseg_host_rules[1]): dst_ports[0] '5432/tcp': not a port or a "
        "low-high range (the protocol goes in its own field - protocol tcp, dst_ports [5432])"]
    assert result["msg"].startswith("3 errors in the policy, nothing was changed: ")

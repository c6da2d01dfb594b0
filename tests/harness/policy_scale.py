# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converging a big policy of random names (issue 17: 100,000 of them and crc32 ids
collided), through the module's code path (_policy.run) on a real pinned program.

random_name_rows(count) times three converges and checks the id table the host keeps after
each: the first run; an identical re-run; a run that removes 1% of the rules and adds as
many new names, a few of them built to ask for the id of a rule that stays. bench/converge.py
(--random-names) and tests/functional/test_policy_scale.py both run it.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy_model
from ansible_collections.ebpf.microseg.tests.harness.datapath import BPF_DIR, new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.policy_names import (
    name_with_id, random_names)

HEADERS = ("run", "seconds", "rules", "ids not the name's crc32")
SIZES = {"range_map_size": 8192, "session_map_size": 65536, "frag_map_size": 1024,
         "rule_stats_size": 65536, "endpoint_map_size": 64, "log_ring_pages": 4}
CRAFTED = 5     # new names that ask for a kept rule's id


def exact_rules(names):
    """One exact 5-tuple rule per name (distinct tuples up to 2**24 rules)."""
    return [{"name": name, "direction": "egress",
             "src": "198.19.%d.%d/32" % (i >> 8 & 255, i & 255),
             "dst": "198.18.%d.%d/32" % ((i >> 16) + 100, i >> 8 & 255),
             "protocol": "tcp", "src_ports": [1024 + i % 60000], "dst_ports": [443],
             "action": "allow"} for i, name in enumerate(names)]


def held_ids(pin):
    """The {name: id} table stored with the active set."""
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        active = pinned.config().policy_epoch & 1
    return _converge.read_source(pin, active)["rule_ids"]


def check_ids(pin, names, kept=None):
    """The host's table: distinct ids 1..2**31-1 for exactly names, kept's ids unchanged."""
    ids = held_ids(pin)
    if sorted(ids) != sorted(names):
        raise AssertionError("the id table does not name the %d rules" % len(names))
    if len(set(ids.values())) != len(ids) or \
            not all(0 < v <= _policy_model.POLICY_ID_MAX for v in ids.values()):
        raise AssertionError("the %d ids are not distinct and nonzero" % len(ids))
    moved = [n for n in kept or () if n in ids and ids[n] != kept[n]]
    if moved:
        raise AssertionError("%d kept names changed their id, %r first" % (len(moved), moved[0]))
    return ids


def _probed(ids):
    return sum(1 for name, pid in ids.items() if pid != _policy_model.policy_id_for(name))


def _run(pin, rules):
    params = {"rules": rules, "segments": None, "state": "overridden", "pin_path": pin,
              "default_action": {"egress": "deny", "ingress": "deny"}, "rule_sources": None,
              "state_dir": None}
    started = time.time()
    result = _policy.run(params, False, False)
    return time.time() - started, result


def random_name_rows(count, sizes=None):
    """HEADERS rows for count rules of random names, on a program of its own."""
    pin = new_pin_path("ids")
    os.makedirs(pin)
    sizes = dict(sizes or SIZES, policy_map_size=2 * count + 20000)
    fds = {}
    rows = []
    try:
        fds, _seconds = _loader.compile_and_load(_loader.read_sources(BPF_DIR), pin, sizes,
                                                 _kernel_headers.find_kernel_headers())
        names = random_names(count + count // 100, seed=count)
        rules = exact_rules(names[:count])
        seconds, result = _run(pin, rules)
        assert result["changed"]
        ids = check_ids(pin, names[:count])
        rows.append(("first run, %d random names" % count, "%.2f" % seconds, count,
                     _probed(ids)))
        seconds, result = _run(pin, rules)
        assert not result["changed"]
        rows.append(("identical re-run", "%.2f" % seconds, count, _probed(ids)))
        new = names[count:]
        stay = [rules[i]["name"] for i in range(1, 1 + CRAFTED)]
        new[:CRAFTED] = [name_with_id(ids[name], "new") for name in stay]
        changed = [dict(r) for r in rules]
        for index, name in zip(range(0, count, 100), new):
            changed[index]["name"] = name       # 1% of the rules go, as many new names come
        seconds, result = _run(pin, changed)
        assert result["changed"]
        now = check_ids(pin, [r["name"] for r in changed], kept=ids)
        if any(now[name] == ids[old] for name, old in zip(new[:CRAFTED], stay)):
            raise AssertionError("a new name took the id of a rule that stays")
        rows.append(("1%% removed, 1%% new names (%d, %d asking for a kept id)"
                     % (count // 100, CRAFTED), "%.2f" % seconds, count, _probed(now)))
    finally:
        for fd in fds.values():
            os.close(fd)
        _loader.remove_pins(pin)
    return rows

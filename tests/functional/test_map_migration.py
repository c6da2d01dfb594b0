# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An upgrade whose struct gained fields keeps the entries of the old map."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _map_migration
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path

# session_value before it learned its endpoint (ifindex): 64 bytes.
OLD_VALUE_SIZE = 64


def _pinned(pin, name, map_type, key_size, value_size, entries, flags=0):
    fd = bpf.map_create(map_type, key_size, value_size, entries, flags, name[:15])
    try:
        bpf.obj_pin(fd, os.path.join(pin, name))
    except Exception:
        bpf.close(fd)
        raise
    return fd


def test_grown_session_value_is_copied_with_a_zeroed_tail():
    pin = new_pin_path("mig")
    os.makedirs(pin)
    fds = []
    try:
        spec = _maps.MAP_SPEC["session_map"]
        assert spec.value_size > OLD_VALUE_SIZE
        old = _pinned(pin, "session_map_old", spec.map_type, spec.key_size, OLD_VALUE_SIZE,
                      256, spec.flags)
        new = _pinned(pin, "session_map", spec.map_type, spec.key_size, spec.value_size, 256,
                      spec.flags)
        fds = [old, new]
        items = []
        for i in range(10):
            key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.18.1.%d" % (i + 1)),
                                   dst_ip=_maps.ip_to_u32("198.18.2.1"), src_port=40000 + i,
                                   dst_port=80, protocol=6)
            value = _maps.SessionValue(packets=i + 1, action=_abi.MS_ACTION_ALLOW, state=3,
                                       policy_id=7, direction=1)
            items.append((key.pack(), value.pack()[:OLD_VALUE_SIZE]))
        bpf.map_update_batch(old, items, spec.key_size, OLD_VALUE_SIZE, 0)
        copied = _map_migration.migrate_maps(pin, ["session_map"])
        assert copied == {"session_map": 10}
        assert not os.path.exists(os.path.join(pin, "session_map_old"))
        got = dict((bytes(k), _maps.SessionValue.unpack(v)) for k, v in
                   bpf.map_lookup_batch(new, spec.key_size, spec.value_size))
        assert len(got) == 10
        for key, raw in items:
            value = got[key]
            assert value.pack()[:OLD_VALUE_SIZE] == raw
            assert (value.ifindex, value.reserved2) == (0, 0)
            assert value.policy_id == 7 and value.direction == 1
    finally:
        for fd in fds:
            bpf.close(fd)
        _loader.remove_pins(pin)

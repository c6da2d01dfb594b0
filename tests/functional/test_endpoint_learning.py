# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg-monitor learns each container's address (learn_endpoints) and follows changes;
the L2 trust checks then hold for containers nobody listed in `endpoints`."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_adhoc, run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath, new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab, ifindex
from ansible_collections.ebpf.microseg.tests.harness.monitor_process import MonitorProcess

SUBNET = "198.18.110"


def endpoints(pin):
    with _maps.PinnedMaps(pin, names=["endpoint_map"]) as pinned:
        return dict((key.value, value) for key, value in pinned.items("endpoint_map"))


def stats(pin):
    with _maps.PinnedMaps(pin, names=["stats_map"]) as pinned:
        return pinned.stats()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return time.monotonic()


@pytest.fixture(scope="module")
def learning():
    lab = Lab(subnet=SUBNET, names=("web", "db"))
    pin = new_pin_path("learn")
    monitor = None
    try:
        res = run_playbook([{"ebpf.microseg.microseg_program": {
            "bridge": lab.bridge, "pin_path": pin, "session_map_size": 4096,
            "learn_endpoints": True, "endpoints": {lab["db"].host_if: lab["db"].address}}}])
        assert res.rc == 0, res.stdout
        lab.wait_links()
        lab["db"].serve("tcp", 5432)
        monitor = MonitorProcess(pin, "--bridge", lab.bridge)
        monitor.wait_for("opened the data plane")
        yield lab, pin, monitor
    finally:
        if monitor:
            monitor.terminate()
        lab.destroy(pin_path=pin)


def test_addresses_are_learned_and_given_ones_win(learning):
    lab, pin, _monitor = learning
    web, db = lab["web"], lab["db"]
    web_index = ifindex(web.host_if)
    wait_for(lambda: web_index in endpoints(pin), 3.0, "web's address never learned")
    entry = endpoints(pin)[web_index]
    assert _maps.u32_to_ip(entry.ip) == web.address and entry.prefixlen == 24
    assert entry.flags & _abi.ENDPOINT_FLAG_LEARNED and entry.flags & _abi.ENDPOINT_FLAG_MAC
    mac = web.run("cat", "/sys/class/net/eth0/address").stdout.strip()
    assert ":".join("%02x" % b for b in entry.mac) == mac
    given = endpoints(pin)[ifindex(db.host_if)]
    assert not given.flags & _abi.ENDPOINT_FLAG_LEARNED and given.prefixlen == 0
    # The module does not see the monitor's entries as drift, and keeps them.
    again = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": lab.bridge, "pin_path": pin, "session_map_size": 4096,
        "learn_endpoints": True, "endpoints": {db.host_if: db.address}}}])
    assert again.task()["changed"] is False
    assert web_index in endpoints(pin)
    facts = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin).task()
    known = facts["ansible_facts"]["microseg"]["endpoints"]
    assert known[web.host_if]["address"] == web.address
    assert known[web.host_if]["source"] == "learned" and known[web.host_if]["mac"] == mac
    assert known[db.host_if]["source"] == "given"
    assert web.probe("tcp", db.address, 5432) == "ok"


def test_a_container_changing_its_address_is_followed_within_a_second(learning):
    lab, pin, _monitor = learning
    web, db = lab["web"], lab["db"]
    web_index = ifindex(web.host_if)
    wait_for(lambda: web_index in endpoints(pin), 3.0, "web's address never learned")
    new = SUBNET + ".77"
    web.run("ip", "addr", "del", web.address + "/24", "dev", "eth0")
    web.run("ip", "addr", "add", new + "/24", "dev", "eth0")
    try:
        changed = time.monotonic()
        followed = wait_for(
            lambda: _maps.u32_to_ip(endpoints(pin)[web_index].ip) == new, 3.0,
            "the monitor did not follow web's new address")
        assert followed - changed < 1.0, followed - changed
        assert web.probe("tcp", db.address, 5432) == "ok"      # from the new address
        # The old address is now someone else's: sending from it is spoofing.
        before = stats(pin)["spoof_drops"]
        web.run("ip", "addr", "add", web.address + "/32", "dev", "eth0")
        assert web.probe("tcp", db.address, 5432, 0.5) == "ok"  # source is still .77
        web.run("ip", "route", "add", db.address + "/32", "dev", "eth0", "src", web.address)
        assert web.probe("tcp", db.address, 5432, 0.5) == "fail"
        assert stats(pin)["spoof_drops"] > before
    finally:
        web.run("ip", "route", "del", db.address + "/32", check=False)
        web.run("ip", "addr", "flush", "dev", "eth0")
        web.run("ip", "addr", "add", web.address + "/24", "dev", "eth0")
    wait_for(lambda: _maps.u32_to_ip(endpoints(pin)[web_index].ip) == web.address, 3.0,
             "the monitor did not follow web back")


def test_learned_entries_of_an_earlier_run_go_when_learning_is_off():
    """A monitor started with learning off removes learned entries a previous one left,
    and keeps given ones."""
    dp = Datapath()
    monitor = None
    try:
        learned = _maps.EndpointValue(ip=_maps.ip_to_u32("198.18.110.5"),
                                      flags=_abi.ENDPOINT_FLAG_LEARNED)
        given = _maps.EndpointValue(ip=_maps.ip_to_u32("198.18.110.6"))
        dp.maps.update("endpoint_map", _maps.U32(1001), learned)
        dp.maps.update("endpoint_map", _maps.U32(1002), given)
        monitor = MonitorProcess(dp.pin_path)
        monitor.wait_for("opened the data plane")
        wait_for(lambda: 1001 not in endpoints(dp.pin_path), 3.0,
                 "a stale learned entry survived")
        assert _maps.u32_to_ip(endpoints(dp.pin_path)[1002].ip) == "198.18.110.6"
    finally:
        if monitor:
            monitor.terminate()
        dp.close()

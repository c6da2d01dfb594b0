# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`bridge:` filters container ports only, never the host's uplink (issue 22).

A bridge with a container's veth (peer in the container's namespace), an "uplink": a veth
whose peer stays in this namespace, as a veth to the host would be, and a dummy port standing
for a physical NIC (a kind that is not a container's; a tap where the kernel has no dummy).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_adhoc, run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab, sh
from ansible_collections.ebpf.microseg.tests.harness.monitor_process import MonitorProcess


def fake_link(name, index, kind, master=None, peer_netnsid=None):
    return {"name": name, "index": index, "kind": kind, "master": master, "up": True,
            "peer_netnsid": peer_netnsid}


def test_selection_rule_without_root():
    links = [fake_link("br0", 2, "bridge"), fake_link("eno1", 3, None, master=2),
             fake_link("vethA", 4, "veth", master=2, peer_netnsid=0),
             fake_link("vethHost", 5, "veth", master=2), fake_link("tap0", 6, "tun", master=2),
             fake_link("vethOther", 7, "veth", peer_netnsid=1)]
    assert _netlink.bridge_ports(links, "br0") == (["vethA"], ["eno1", "tap0", "vethHost"])
    assert _netlink.select_interfaces(links, [], "br0") == ["vethA"]
    assert _netlink.select_interfaces(links, ["eno1"], "br0") == ["eno1", "vethA"]
    globbed = _netlink.select_interfaces(links, ["veth*"], None)
    assert globbed == ["vethA", "vethHost", "vethOther"]
    by_name = dict((link["name"], link) for link in links)
    assert _netlink.is_selected(by_name["vethA"], links, [], "br0")
    assert not _netlink.is_selected(by_name["eno1"], links, [], "br0")
    assert _netlink.is_selected(by_name["eno1"], links, ["eno1"], "br0")
    assert not _netlink.is_selected(by_name["br0"], links, ["br*"], "br0")


def filters_on(name):
    ipr = _netlink.open_route()
    try:
        index = ipr.link_lookup(ifname=name)[0]
        return dict((hook, bool(_netlink.our_filter(ipr, index, hook)))
                    for hook in ("ingress", "egress"))
    finally:
        ipr.close()


@pytest.fixture
def bridged():
    lab = Lab(subnet="198.18.112", names=("web",))
    pin = new_pin_path("uplink")
    uplink = lab.tag + "up"
    dummy = lab.tag + "dm"
    extra = [uplink, dummy]
    try:
        sh("ip", "link", "add", uplink, "type", "veth", "peer", "name", uplink + "p")
        sh("ip", "link", "set", uplink, "master", lab.bridge, "up")
        if sh("ip", "link", "add", dummy, "type", "dummy", check=False).returncode:
            # A kernel without the dummy driver (this VM's): a tap is not a container's either.
            sh("ip", "tuntap", "add", "dev", dummy, "mode", "tap")
        sh("ip", "link", "set", dummy, "master", lab.bridge, "up")
        yield lab, pin, uplink, dummy, extra
    finally:
        for name in extra:
            sh("ip", "link", "del", name, check=False)
        lab.destroy(pin_path=pin)


def test_the_uplink_is_skipped_reported_and_attached_only_when_named(bridged):
    lab, pin, uplink, dummy, _extra = bridged
    web = lab["web"].host_if
    res = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": lab.bridge, "pin_path": pin, "session_map_size": 4096}}])
    assert res.rc == 0, res.stdout
    task = res.task()
    assert task["skipped_interfaces"] == sorted([uplink, dummy])
    for name in (uplink, dummy):
        assert any(name in warning for warning in task.get("warnings", [])), task.get("warnings")
    assert set(task["interfaces"]) == {web}
    assert filters_on(web) == {"ingress": True, "egress": True}
    assert filters_on(uplink) == {"ingress": False, "egress": False}
    assert filters_on(dummy) == {"ingress": False, "egress": False}
    facts = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin).task()
    assert facts["ansible_facts"]["microseg"]["skipped_ports"] == sorted([uplink, dummy])
    assert facts["ansible_facts"]["microseg"]["drift"] == []
    named = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": lab.bridge, "interfaces": [dummy], "pin_path": pin,
        "session_map_size": 4096}}]).task()
    assert named["skipped_interfaces"] == [uplink] and set(named["interfaces"]) == {web, dummy}
    assert filters_on(dummy) == {"ingress": True, "egress": True}
    assert filters_on(uplink) == {"ingress": False, "egress": False}
    facts = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin).task()
    assert facts["ansible_facts"]["microseg"]["skipped_ports"] == [uplink]
    both = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": lab.bridge, "interfaces": [dummy, uplink], "pin_path": pin,
        "session_map_size": 4096}}]).task()
    assert both["skipped_interfaces"] == [] and set(both["interfaces"]) == {web, dummy, uplink}
    assert filters_on(uplink) == {"ingress": True, "egress": True}


def test_the_monitor_auto_attaches_new_container_ports_but_not_uplinks(bridged):
    lab, pin, _uplink, dummy, extra = bridged
    res = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": lab.bridge, "pin_path": pin, "session_map_size": 4096}}])
    assert res.rc == 0, res.stdout
    monitor = MonitorProcess(pin, "--bridge", lab.bridge)
    try:
        monitor.wait_for("opened the data plane")
        second_uplink = lab.tag + "u2"
        extra.append(second_uplink)
        sh("ip", "link", "add", second_uplink, "type", "veth", "peer", "name",
           second_uplink + "p")
        sh("ip", "link", "set", second_uplink, "master", lab.bridge, "up")
        lab._add("late", "198.18.112.40")      # a container started after the run
        late = lab["late"].host_if
        deadline = time.monotonic() + 3.0
        while filters_on(late) != {"ingress": True, "egress": True}:
            assert time.monotonic() < deadline, "the new container port was not attached"
            time.sleep(0.05)
        time.sleep(0.5)
        assert filters_on(second_uplink) == {"ingress": False, "egress": False}
        assert filters_on(dummy) == {"ingress": False, "egress": False}
    finally:
        monitor.terminate()

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg_program through real ansible-playbook runs on this host.

Each scenario uses its own bridge, veths and pin directory, and removes them.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import subprocess
import sys
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import run_adhoc, run_playbook
from ansible_collections.ebpf.microseg.tests.harness.datapath import BPF_DIR, new_pin_path
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab

SMALL = {"policy_map_size": 2048, "range_map_size": 1024, "session_map_size": 16384}


@pytest.fixture
def lab():
    lab = Lab(subnet="198.18.101", names=("a", "b"))
    pin = new_pin_path("mod")
    try:
        yield lab, pin
    finally:
        lab.destroy(pin_path=pin)


def program_task(pin, lab, **extra):
    args = {"bridge": lab.bridge, "pin_path": pin}
    args.update(SMALL)
    args.update(extra)
    return {"name": "microseg program", "ebpf.microseg.microseg_program": args}


def attachments(lab):
    ipr = _netlink.open_route()
    try:
        out = {}
        for ctr in lab.containers.values():
            idx = ipr.link_lookup(ifname=ctr.host_if)[0]
            out[ctr.host_if] = dict(
                (hook, (_netlink.our_filter(ipr, idx, hook) or {}).get("prog_id"))
                for hook in ("ingress", "egress"))
            out[ctr.host_if]["clsact"] = _netlink.has_clsact(ipr, idx)
        return out
    finally:
        ipr.close()


def test_present_twice_then_absent(lab):
    lab, pin = lab
    first = run_playbook([program_task(pin, lab)])
    res = first.task()
    assert first.rc == 0, first.stdout
    assert res["changed"] is True and res["compiled"] is True
    assert res["headers"]["kind"] in ("installed", "kheaders", "fallback")
    assert set(res["interfaces"]) == set(c.host_if for c in lab.containers.values())
    attached = attachments(lab)
    for host_if, hooks in attached.items():
        assert hooks["ingress"] == res["programs"]["microseg_from_container"]["id"]
        assert hooks["egress"] == res["programs"]["microseg_to_container"]["id"]
        assert hooks["clsact"]
    for spec in _maps.MAP_SPECS:
        assert os.path.exists(os.path.join(pin, spec.name)), spec.name
    with _maps.PinnedMaps(pin, names=["policy_map", "config_map"]) as pinned:
        assert pinned.info("policy_map")["max_entries"] == SMALL["policy_map_size"]
        assert pinned.config().session_max == SMALL["session_map_size"]

    second = run_playbook([program_task(pin, lab)])
    res2 = second.task()
    assert second.rc == 0
    assert res2["changed"] is False and res2["compiled"] is False
    assert res2["actions"] == []
    assert attachments(lab) == attached

    gone = run_playbook([{"ebpf.microseg.microseg_program": {"state": "absent",
                                                             "pin_path": pin}}])
    assert gone.rc == 0 and gone.task()["changed"] is True
    for hooks in attachments(lab).values():
        assert hooks == {"ingress": None, "egress": None, "clsact": False}
    assert not os.path.exists(pin)

    again = run_playbook([{"ebpf.microseg.microseg_program": {"state": "absent",
                                                              "pin_path": pin}}])
    assert again.rc == 0 and again.task()["changed"] is False


def test_check_mode_predicts_and_changes_nothing(lab):
    lab, pin = lab
    check = run_playbook([program_task(pin, lab)], check=True, diff=True)
    res = check.task()
    assert check.rc == 0
    assert res["changed"] is True and res["compiled"] is False
    assert {"action": "compile", "reason": "no pinned program"} in res["actions"]
    assert sorted(res["diff"]["after"]["interfaces"]) == sorted(
        c.host_if for c in lab.containers.values())
    assert not os.path.exists(pin)
    assert all(h == {"ingress": None, "egress": None, "clsact": False}
               for h in attachments(lab).values())

    real = run_playbook([program_task(pin, lab)], diff=True)
    assert real.task()["diff"]["after"] == res["diff"]["after"]

    # A runtime-only change: check mode names it, the real run applies it without compiling.
    check2 = run_playbook([program_task(pin, lab, syn_flood_threshold=77)], check=True)
    assert check2.task()["changed"] is True
    # ... and that the boot restore's record is rewritten with the new parameters.
    assert [a["action"] for a in check2.task()["actions"]] == ["write_config", "save_state"]
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        assert pinned.config().syn_flood_threshold == 10000
    real2 = run_playbook([program_task(pin, lab, syn_flood_threshold=77)])
    assert real2.task()["changed"] is True and real2.task()["compiled"] is False
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        assert pinned.config().syn_flood_threshold == 77


def test_degradation_and_quota_options_are_runtime_config(lab):
    """No compile for them; check mode predicts, the second run is unchanged."""
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    opts = {"degraded_passthrough": "never", "endpoint_half_open_quota": 64,
            "endpoint_session_quota": 0}
    check = run_playbook([program_task(pin, lab, **opts)], check=True, diff=True)
    res = check.task()
    assert res["changed"] is True and \
        [a["action"] for a in res["actions"]] == ["write_config", "save_state"]
    after = res["diff"]["after"]["config"]
    assert (after["degraded_passthrough"], after["endpoint_half_open_quota"],
            after["endpoint_session_quota"]) == ("never", 64, 0)
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        config = pinned.config()
        assert (config.degraded_passthrough, config.endpoint_half_open_quota,
                config.endpoint_session_quota) == (0, 2048, SMALL["session_map_size"] // 2)
    real = run_playbook([program_task(pin, lab, **opts)], diff=True)
    assert real.task()["changed"] is True and real.task()["compiled"] is False
    assert real.task()["diff"]["after"] == res["diff"]["after"]
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        config = pinned.config()
        assert (config.degraded_passthrough, config.endpoint_half_open_quota,
                config.endpoint_session_quota) == (_abi.PASSTHROUGH_MODES["never"], 64, 0)
    assert run_playbook([program_task(pin, lab, **opts)]).task()["changed"] is False
    bad = run_playbook([program_task(pin, lab, endpoint_half_open_quota=-1)])
    assert bad.rc != 0 and "endpoint_half_open_quota" in bad.task()["msg"]
    bad = run_playbook([program_task(pin, lab, degraded_passthrough="sometimes")])
    assert bad.rc != 0 and "degraded_passthrough" in bad.task()["msg"]


def test_bad_input_fails_clearly_and_keeps_the_program(lab):
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    before = attachments(lab)

    bad_if = run_playbook([program_task(pin, lab, interfaces=["nosuch0"])])
    assert bad_if.rc != 0
    assert "interfaces: nosuch0 does not exist" in bad_if.task()["msg"]

    bad_size = run_playbook([program_task(pin, lab, policy_map_size=0)])
    assert bad_size.rc != 0
    assert "policy_map_size" in bad_size.task()["msg"]

    bad_ring = run_playbook([program_task(pin, lab, log_ring_pages=3)])
    assert "log_ring_pages" in bad_ring.task()["msg"]

    bad_bridge = run_playbook([{"ebpf.microseg.microseg_program": {
        "bridge": "nosuchbr0", "pin_path": pin}}])
    assert "bridge: nosuchbr0 does not exist" in bad_bridge.task()["msg"]

    assert attachments(lab) == before


def test_recompile_replaces_program_and_keeps_sessions(lab):
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    first = attachments(lab)
    with _maps.PinnedMaps(pin, names=["session_map"]) as pinned:
        key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.18.101.10"),
                               dst_ip=_maps.ip_to_u32("198.18.101.20"), src_port=1,
                               dst_port=2, protocol=17)
        pinned.update("session_map", key, _maps.SessionValue(packets=5))
    # A different size of another map changes the compile: new program, same sessions.
    res = run_playbook([program_task(pin, lab, frag_map_size=512)]).task()
    assert res["changed"] is True and res["compiled"] is True
    assert res["maps_migrated"] == {"frag_map": 0}
    second = attachments(lab)
    for host_if in first:
        assert second[host_if]["ingress"] != first[host_if]["ingress"]
        assert second[host_if]["ingress"] is not None
    with _maps.PinnedMaps(pin, names=["session_map", "frag_map"]) as pinned:
        assert pinned.lookup("session_map", key).packets == 5
        assert pinned.info("frag_map")["max_entries"] == 512


def test_resizing_the_session_map_copies_sessions(lab):
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    with _maps.PinnedMaps(pin, names=["session_map"]) as pinned:
        pairs = []
        for port in range(100):
            key = _maps.SessionKey(src_ip=_maps.ip_to_u32("198.18.101.10"),
                                   dst_ip=_maps.ip_to_u32("198.18.101.20"),
                                   src_port=port, dst_port=80, protocol=6)
            pairs.append((key, _maps.SessionValue(packets=port)))
        pinned.update_many("session_map", pairs)
    res = run_playbook([program_task(pin, lab, session_map_size=32768)]).task()
    assert res["compiled"] is True
    assert res["maps_migrated"] == {"session_map": 100}
    with _maps.PinnedMaps(pin, names=["session_map"]) as pinned:
        assert pinned.info("session_map")["max_entries"] == 32768
        assert pinned.count("session_map") == 100
        assert not os.path.exists(os.path.join(pin, "session_map_old"))


def test_interfaces_by_glob_and_detach_when_deselected(lab):
    lab, pin = lab
    a, b = lab["a"], lab["b"]
    res = run_playbook([{"ebpf.microseg.microseg_program": dict(
        SMALL, pin_path=pin, interfaces=[a.host_if], hooks=["ingress"])}]).task()
    assert set(res["interfaces"]) == {a.host_if}
    assert set(res["interfaces"][a.host_if]) == {"ingress"}
    res = run_playbook([{"ebpf.microseg.microseg_program": dict(
        SMALL, pin_path=pin, interfaces=[lab.tag + "*"])}]).task()
    assert res["changed"] is True and res["compiled"] is False
    assert set(res["interfaces"]) == {a.host_if, b.host_if}
    res = run_playbook([{"ebpf.microseg.microseg_program": dict(
        SMALL, pin_path=pin, interfaces=[b.host_if])}]).task()
    assert set(res["interfaces"]) == {b.host_if}
    assert attachments(lab)[a.host_if] == {"ingress": None, "egress": None, "clsact": False}


def test_adhoc_program_then_facts_after_real_traffic(lab):
    """`ansible -m ebpf.microseg.microseg_program -a bridge=...` on a host that never ran a
    role: the action plugin ships the C source. Facts then read back real counters."""
    lab, pin = lab
    args = "bridge=%s pin_path=%s session_map_size=16384 policy_map_size=2048" % (
        lab.bridge, pin)
    res = run_adhoc("ebpf.microseg.microseg_program", args)
    assert res.rc == 0, res.stdout
    assert res.task()["changed"] is True and res.task()["compiled"] is True
    lab.wait_links()
    a, b = lab["a"], lab["b"]
    b.serve("tcp", 5432)
    assert a.probe("tcp", b.address, 5432) == "ok"

    facts = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin)
    assert facts.rc == 0, facts.stdout
    ms = facts.task()["ansible_facts"]["microseg"]
    assert ms["installed"] is True
    assert set(ms["interfaces"]) == {a.host_if, b.host_if}
    assert set(ms["interfaces"][a.host_if]) == {"ingress", "egress"}
    assert ms["drift"] == []
    assert ms["stats"]["total_packets"] >= 6
    assert ms["stats"]["total_packets"] == (ms["stats"]["allowed_packets"] +
                                            ms["stats"]["denied_packets"])
    assert ms["maps"]["session_map"]["entries"] >= 2
    assert ms["maps"]["session_map"]["max_entries"] == 16384
    assert ms["config"]["default_action"] == {"egress": "allow", "ingress": "allow"}
    assert ms["config"]["degraded_passthrough"] == "default_only"
    assert ms["config"]["endpoint_session_quota"] == 16384 // 2
    assert ms["config"]["endpoint_half_open_quota"] == 2048
    # Both endpoints opened flows (a's SYN at a's port, b's view of it at b's): each is
    # counted against its own quota.
    for ctr in (a, b):
        usage = ms["endpoints"][ctr.host_if]
        assert usage["sessions"] >= 1 and usage["over_quota"] == []
        assert usage["session_quota"] == 8192 and usage["syn_quota_drops"] == 0
    assert ms["pressure"]["level"] == "normal"
    assert ms["program"]["programs"]["microseg_from_container"]["id"] == \
        ms["interfaces"][a.host_if]["ingress"]["prog_id"]

    sessions = ms["sessions"]
    assert sessions["by_protocol"].get("tcp", 0) >= 2     # a's view and b's view
    assert sum(sessions["tcp_states"].values()) == sessions["by_protocol"]["tcp"]
    assert "list" not in sessions
    listed = run_playbook([{"ebpf.microseg.microseg_facts": {
        "pin_path": pin, "sessions": {"address": b.address, "port": 5432, "limit": 1}}}])
    view = listed.task()["ansible_facts"]["microseg"]["sessions"]
    assert view["matched"] >= 2 and len(view["list"]) == 1 and view["truncated"] is True
    assert b.address in (view["list"][0]["container"], view["list"][0]["remote"])
    assert view["list"][0]["protocol"] == "tcp" and view["list"][0]["action"] == "allow"

    # Check mode on facts reads the same and changes nothing.
    again = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin, check=True)
    assert again.rc == 0 and again.task()["changed"] is False

    # Drift: someone deletes our filter behind Ansible's back.
    ipr = _netlink.open_route()
    try:
        _netlink.detach(ipr, ipr.link_lookup(ifname=a.host_if)[0], "ingress")
    finally:
        ipr.close()
    ms = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin).task()[
        "ansible_facts"]["microseg"]
    assert set(ms["interfaces"][a.host_if]) == {"egress"}
    res = run_adhoc("ebpf.microseg.microseg_program", args).task()
    assert res["changed"] is True and res["compiled"] is False
    assert {"action": "attach", "interface": a.host_if, "hook": "ingress"} in res["actions"]


def test_facts_on_a_host_without_the_program(lab):
    _lab, pin = lab
    res = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin)
    assert res.rc == 0
    assert res.task()["ansible_facts"]["microseg"]["installed"] is False
    assert res.task()["msg"].startswith("no microseg data plane is pinned at %s: run "
                                        "ebpf.microseg.microseg_program" % pin)
    # gathered returns the empty policy (with a warning) instead of failing.
    gathered = run_adhoc("ebpf.microseg.microseg_policy", "pin_path=%s state=gathered" % pin)
    assert gathered.rc == 0, gathered.stdout
    assert gathered.task()["gathered"]["rules"] == []
    assert "nothing is converged there" in " ".join(gathered.task().get("warnings", []))


def _flood(sender, address, port, seconds):
    """Send UDP datagrams for `seconds` from a namespace; returns the Popen."""
    script = ("import socket,time\n"
              "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "end=time.time()+%f\n"
              "n=0\n"
              "while time.time()<end:\n"
              "    s.sendto(b'x',('%s',%d)); n+=1; time.sleep(0.0005)\n"
              "print(n)\n" % (seconds, address, port))
    return subprocess.Popen(["ip", "netns", "exec", sender.netns, sys.executable, "-c", script],
                            stdout=subprocess.PIPE, universal_newlines=True)


def _count_received(receiver, port, seconds):
    script = ("import socket,time\n"
              "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "s.bind(('0.0.0.0',%d)); s.settimeout(0.2)\n"
              "print('ready',flush=True)\n"
              "end=time.time()+%f; n=0\n"
              "while time.time()<end:\n"
              "    try:\n"
              "        s.recv(64); n+=1\n"
              "    except OSError:\n"
              "        pass\n"
              "print(n)\n" % (port, seconds))
    proc = subprocess.Popen(["ip", "netns", "exec", receiver.netns, sys.executable, "-c",
                             script], stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_replacing_the_program_leaves_no_unfiltered_window(lab):
    """Denied datagrams flow during a recompile + replace: not one gets through."""
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        cfg = pinned.config()
        cfg.default_action[0] = cfg.default_action[1] = _abi.MS_ACTION_DENY
        pinned.write_config(cfg)
    lab.wait_links()
    a, b = lab["a"], lab["b"]
    receiver = _count_received(b, 6000, 12.0)
    sender = _flood(a, b.address, 6000, 10.0)
    try:
        time.sleep(1.0)
        res = run_playbook([program_task(pin, lab, frag_map_size=1024)]).task()
        assert res["compiled"] is True
        sent = int(sender.communicate(timeout=30)[0].strip())
        received = int(receiver.communicate(timeout=30)[0].strip())
    finally:
        for proc in (sender, receiver):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert sent > 1000
    assert received == 0
    with _maps.PinnedMaps(pin, names=["config_map"]) as pinned:
        assert pinned.config().default_action[0] == _abi.MS_ACTION_DENY   # config survived


@pytest.mark.parametrize("breakage,message", [
    ("syntax", "BCC failed to compile"),
    ("verifier", "the kernel refused the microseg program"),
])
def test_compile_or_kernel_refusal_keeps_the_previous_program(lab, breakage, message):
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    before = attachments(lab)
    sources = _loader.read_sources(BPF_DIR)
    body = sources["microseg.bpf.c"]
    if breakage == "syntax":
        body += "\nthis is not C;\n"
    else:
        # Read past the packet without a bounds check: the verifier must say no.
        body = body.replace("int microseg_from_container(struct __sk_buff *skb)\n{\n",
                            "int microseg_from_container(struct __sk_buff *skb)\n{\n"
                            "    if (*(volatile __u64 *)(long)skb->data == 42)\n"
                            "        return 0;\n", 1)
    sources["microseg.bpf.c"] = body
    res = run_playbook([program_task(pin, lab, bpf_source=sources)])
    assert res.rc != 0
    assert message in res.task()["msg"]
    assert "previous program" in res.task()["msg"]
    assert attachments(lab) == before
    assert not [n for n in os.listdir(pin) if n.endswith("_new")]


def test_anti_spoofing_drops_foreign_source_addresses(lab):
    lab, pin = lab
    a, b = lab["a"], lab["b"]
    res = run_playbook([program_task(pin, lab, endpoints={a.host_if: a.address})]).task()
    assert res["changed"] is True
    with _maps.PinnedMaps(pin, names=["endpoint_map", "config_map"]) as pinned:
        entries = dict((k.value, _maps.u32_to_ip(v.ip)) for k, v in pinned.items("endpoint_map"))
        assert list(entries.values()) == [a.address]
        assert pinned.config().flags & _abi.MS_CFG_ANTISPOOF
    again = run_playbook([program_task(pin, lab, endpoints={a.host_if: a.address})]).task()
    assert again["changed"] is False
    lab.wait_links()
    b.serve("udp", 5353)
    spoofed = "198.18.101.99"
    a.run("ip", "addr", "add", spoofed + "/24", "dev", "eth0")
    send = ("import socket\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(0.5)\n"
            "s.bind(('%s',0)); s.sendto(b'x',('%s',5353))\n"
            "try:\n    s.recv(8); print('ok')\nexcept OSError:\n    print('fail')\n")
    assert a.run(sys.executable, "-c", send % (a.address, b.address)).stdout.strip() == "ok"
    assert a.run(sys.executable, "-c", send % (spoofed, b.address)).stdout.strip() == "fail"
    with _maps.PinnedMaps(pin) as pinned:
        assert pinned.stats()["spoof_drops"] >= 1
    # Empty endpoints: the check is off and the map empty again.
    off = run_playbook([program_task(pin, lab)]).task()
    assert off["changed"] is True
    assert a.run(sys.executable, "-c", send % (spoofed, b.address)).stdout.strip() == "ok"
    bad = run_playbook([program_task(pin, lab, endpoints={a.host_if: "300.1.1.1"})])
    assert bad.rc != 0 and "endpoints" in bad.task()["msg"]


def test_two_instances_in_one_namespace_leave_each_other_alone(lab):
    """Both instances use the same priority and handle; the filter name tells them apart."""
    lab, pin = lab
    other_lab = Lab(subnet="198.18.105", names=("c",))
    other_pin = new_pin_path("mod2")
    try:
        assert run_playbook([program_task(pin, lab)]).rc == 0
        assert run_playbook([program_task(other_pin, other_lab)]).rc == 0
        mine, theirs = attachments(lab), attachments(other_lab)
        assert all(hooks["ingress"] and hooks["egress"] for hooks in theirs.values())

        # Converging one instance again neither counts nor touches the other's filters.
        again = run_playbook([program_task(pin, lab)])
        assert again.rc == 0 and again.task()["changed"] is False, again.stdout
        assert sorted(again.task()["interfaces"]) == sorted(mine)
        facts = run_adhoc("ebpf.microseg.microseg_facts", "pin_path=%s" % pin)
        assert sorted(facts.task()["ansible_facts"]["microseg"]["interfaces"]) == sorted(mine)

        # Selecting the other instance's interface is refused before anything changes.
        theirs_if = list(theirs)[0]
        grab = run_playbook([program_task(pin, lab, bridge=None,
                                          interfaces=sorted(mine) + [theirs_if])])
        assert grab.rc != 0
        message = grab.task()["msg"]
        assert theirs_if in message and other_pin in message, message
        assert attachments(other_lab) == theirs and attachments(lab) == mine

        # Removing one instance detaches its own filters only.
        gone = run_playbook([{"ebpf.microseg.microseg_program": {"state": "absent",
                                                                 "pin_path": pin}}])
        assert gone.rc == 0 and gone.task()["changed"] is True
        assert all(h == {"ingress": None, "egress": None, "clsact": False}
                   for h in attachments(lab).values())
        assert attachments(other_lab) == theirs
    finally:
        run_playbook([{"ebpf.microseg.microseg_program": {"state": "absent",
                                                          "pin_path": other_pin}}])
        other_lab.destroy(pin_path=other_pin)


def test_a_filter_no_instance_named_in_our_slot_is_refused_not_taken(lab):
    """Our priority and handle held by a filter whose name records no pin directory (another
    tool's): the module names it and changes nothing, where it used to call it its own."""
    lab, pin = lab
    assert run_playbook([program_task(pin, lab)]).rc == 0
    victim = sorted(attachments(lab))[0]
    ipr = _netlink.open_route()
    fds = _loader.open_pinned_programs(pin)
    try:
        index = ipr.link_lookup(ifname=victim)[0]
        _netlink.attach(ipr, index, "ingress", fds["microseg_from_container"], "other_tool")
        foreign = _netlink.hook_filters(ipr, index, "ingress", pin)[0]
        assert (foreign["ours"], foreign["held_by"]) == \
            (False, "a BPF filter no microseg instance attached (named 'other_tool')")
        before = attachments(lab)
        refused = run_playbook([program_task(pin, lab)])
        assert refused.rc != 0
        message = refused.task()["msg"]
        assert "%s ingress hook is held by a BPF filter no microseg instance attached " \
               "(named 'other_tool')" % victim in message, message
        assert "tc filter del dev %s ingress" % victim in message, message
        assert attachments(lab) == before
        assert _netlink.hook_filters(ipr, index, "ingress", pin)[0]["name"] == "other_tool"
    finally:
        for fd in fds.values():
            os.close(fd)
        ipr.close()

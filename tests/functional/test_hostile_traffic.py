# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stateful core under real traffic: one container's SYN flood against the others'
new connections (per-endpoint quota), and path MTU discovery through a router with a
smaller MTU under default deny (related ICMP errors)."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.netlab import (
    PROBE, Lab, ifindex, sh, stop_processes)
from ansible_collections.ebpf.microseg.tests.harness.pair_rules import allow_pair

SUBNET = "198.18.106"
GHOST = SUBNET + ".99"            # a static neighbour nobody owns: SYNs to it stay SYN_SENT
GHOST_MAC = "02:00:00:00:00:99"
FAR_NET = "198.18.107"            # behind the router, over the 1280-byte link
FAR = FAR_NET + ".10"
ROUTER_NEAR = SUBNET + ".1"
DENY_BOTH = {"egress": "deny", "ingress": "deny"}
HOST_SYN_THRESHOLD = 200
QUOTA = 50
FLOOD = 600
CONNECTIONS = 20
UPLOAD = 1024 * 1024

BULK_SERVER = textwrap.dedent("""
    import socket, sys
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(4)
    print("listening", flush=True)
    while True:
        conn, _peer = srv.accept()
        total = 0
        while True:
            data = conn.recv(65536)
            if not data:
                break
            total += len(data)
        conn.sendall(str(total).encode()); conn.close()
""")

BULK_CLIENT = textwrap.dedent("""
    import socket, sys
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
    conn.sendall(b"m" * int(sys.argv[3])); conn.shutdown(socket.SHUT_WR)
    print(conn.recv(64).decode() or "nothing", flush=True)
""")


@pytest.fixture(scope="module")
def lab():
    """flood, client and server containers on one bridge, plus a router to FAR_NET."""
    net = Lab(subnet=SUBNET, names=("flood", "client", "server"))
    dp = None
    router, far = net.tag + "-rt", net.tag + "-far"
    rt_port, rt_far = net.tag + "rt", net.tag + "fr"
    processes = []
    try:
        dp = Datapath(sizes={"session_map_size": 8192})
        net.attach(dp.fds, dp.pin_path)
        # The router: one leg on the bridge (not a container port: no program), one leg to
        # the far namespace whose router side has MTU 1280 (the far side keeps 1500, so
        # the far host advertises MSS 1460 and the client's full-size segments meet the
        # small link in the middle).
        sh("ip", "netns", "add", router)
        sh("ip", "netns", "add", far)
        sh("ip", "link", "add", rt_port, "type", "veth", "peer", "name", "near", "netns", router)
        sh("ip", "link", "set", rt_port, "master", net.bridge, "up")
        sh("ip", "link", "add", rt_far, "type", "veth", "peer", "name", "eth0", "netns", far)
        sh("ip", "link", "set", rt_far, "netns", router)
        run_rt = ["ip", "netns", "exec", router]
        run_far = ["ip", "netns", "exec", far]
        for cmd in (["ip", "addr", "add", ROUTER_NEAR + "/24", "dev", "near"],
                    ["ip", "addr", "add", FAR_NET + ".1/24", "dev", rt_far],
                    ["ip", "link", "set", rt_far, "mtu", "1280"],
                    ["ip", "link", "set", "near", "up"], ["ip", "link", "set", rt_far, "up"],
                    ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
            sh(*(run_rt + cmd))
        for cmd in (["ip", "addr", "add", FAR + "/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", FAR_NET + ".1"]):
            sh(*(run_far + cmd))
        for ctr in net.containers.values():
            ctr.run("ip", "route", "add", FAR_NET + ".0/24", "via", ROUTER_NEAR)
        net.wait_links()
        net["flood"].run("ip", "neigh", "replace", GHOST, "lladdr", GHOST_MAC, "dev", "eth0",
                         "nud", "permanent")
        net["server"].serve("tcp", 5432)
        bulk = subprocess.Popen(run_far + [sys.executable, "-c", BULK_SERVER, "5001"],
                                stdout=subprocess.PIPE, universal_newlines=True)
        processes.append(bulk)
        assert bulk.stdout.readline().strip() == "listening"
        yield net, dp
    finally:
        stop_processes(processes)
        net.destroy()
        sh("ip", "link", "del", rt_port, check=False)
        sh("ip", "netns", "del", router, check=False)
        sh("ip", "netns", "del", far, check=False)
        if dp:
            dp.close()


def _fresh(dp, **config):
    dp.reset(default_action=DENY_BOTH, syn_flood_threshold=HOST_SYN_THRESHOLD, **config)


def _flood_then_connect(net, dp):
    """flood sends FLOOD bare SYNs to an allowed, silent address; then client opens
    CONNECTIONS new connections to server. Returns how many of them succeeded."""
    flood, client, server = net["flood"], net["client"], net["server"]
    allow_pair(dp, client, server, 5432)
    dp.add_remote_cidr(GHOST + "/32", "egress", "allow", policy_id=9)
    out = flood.run(sys.executable, PROBE, "synflood", GHOST, "9999", str(FLOOD))
    assert out.stdout.strip() == "sent %d" % FLOOD
    results = [client.probe("tcp", server.address, 5432, 1.0) for _i in range(CONNECTIONS)]
    return sum(1 for r in results if r == "ok")


def test_without_a_quota_one_flood_blocks_every_containers_new_connections(lab):
    """The control case: the host-wide SYN guard alone trips for everyone."""
    net, dp = lab
    _fresh(dp, endpoint_half_open_quota=0)
    ok = _flood_then_connect(net, dp)
    assert dp.pressure().syn_sent_count >= HOST_SYN_THRESHOLD
    assert ok == 0, "%d of %d connections passed the tripped host-wide guard" % (ok, CONNECTIONS)


def test_flood_over_its_quota_degrades_only_the_flooding_container(lab):
    net, dp = lab
    _fresh(dp, endpoint_half_open_quota=QUOTA)
    holder = subprocess.Popen(["ip", "netns", "exec", net["client"].netns, sys.executable, PROBE,
                               "hold", net["server"].address, "5432"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, universal_newlines=True)
    try:
        allow_pair(dp, net["client"], net["server"], 5432)
        assert holder.stdout.readline().strip() == "connected"
        ok = _flood_then_connect(net, dp)
        assert ok == CONNECTIONS, "%d of %d connections succeeded" % (ok, CONNECTIONS)
        holder.stdin.write("held\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "ok"
    finally:
        holder.stdin.close()
        stop_processes([holder])
    usage = dp.maps.lookup("endpoint_usage_map", _maps.U32(ifindex(net["flood"].host_if)))
    assert usage.half_open == QUOTA
    assert usage.syn_quota_drops == FLOOD - QUOTA
    assert dp.stats()["endpoint_syn_drops"] == FLOOD - QUOTA
    assert dp.stats()["tcp_syn_floods"] == 0          # the host-wide guard never tripped


def test_pmtu_discovery_works_under_default_deny(lab):
    """A 1 MB upload over a path whose middle link has MTU 1280: the router's
    fragmentation-needed reaches the client only as an error related to its session."""
    net, dp = lab
    _fresh(dp)
    client = net["client"]
    dp.add_remote_cidr(FAR + "/32", "egress", "allow", policy_id=11)
    out = client.run(sys.executable, "-c", BULK_CLIENT, FAR, "5001", str(UPLOAD), "20",
                     check=False)
    assert out.stdout.strip() == str(UPLOAD), (out.stdout, out.stderr)
    assert dp.stats()["icmp_related"] >= 1
    # The error passed, and no session exists for the router's ICMP.
    assert not [k for k, _v in dp.sessions() if k.protocol == 1]
    route = client.run("ip", "route", "get", FAR).stdout
    assert "mtu 1280" in route, route


def test_allowed_connections_keep_opening_at_critical_pressure(lab):
    """Untracked at critical pressure, a new allowed connection still completes: its
    replies pass the reflexive check; the other direction stays closed."""
    net, dp = lab
    _fresh(dp, pressure_warn_sessions=1, pressure_crit_sessions=1)
    client, server = net["client"], net["server"]
    allow_pair(dp, client, server, 5432)
    dp.maps.write_pressure(_maps.MapPressure(total_sessions=1, last_check=time.monotonic_ns()))
    results = [client.probe("tcp", server.address, 5432, 1.0) for _i in range(5)]
    assert results == ["ok"] * 5
    assert net["flood"].probe("tcp", server.address, 5432, 0.5) == "fail"
    stats = dp.stats()
    assert stats["degraded_replies"] >= 5 and stats["map_full_drops"] >= 1
    assert dp.pressure().pressure_level == 2
    assert not [k for k, _v in dp.sessions() if k.protocol == 6]


def test_denied_syns_never_trip_the_guard_for_allowed_connections(lab):
    """More denied SYNs than the host-wide threshold: none is counted, none blocks."""
    net, dp = lab
    _fresh(dp, endpoint_half_open_quota=0)      # the host-wide guard alone
    flood, client, server = net["flood"], net["client"], net["server"]
    allow_pair(dp, client, server, 5432)
    out = flood.run(sys.executable, PROBE, "synflood", server.address, "9000",
                    str(HOST_SYN_THRESHOLD + 100))
    assert out.stdout.strip() == "sent %d" % (HOST_SYN_THRESHOLD + 100)
    assert dp.pressure().syn_sent_count == 0
    results = [client.probe("tcp", server.address, 5432, 1.0) for _i in range(CONNECTIONS)]
    assert results == ["ok"] * CONNECTIONS
    stats = dp.stats()
    assert stats["tcp_syn_floods"] == 0 and stats["denied_packets"] >= HOST_SYN_THRESHOLD + 100

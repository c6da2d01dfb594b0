# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""L2 trust on real traffic: ARP spoofing, flooded frames, VLAN tags (issue 22).

Three containers on a bridge with the program on every port and each port bound to its
container's address (the `endpoints` option's map entries, written here directly).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import contextlib
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _endpoints
from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath
from ansible_collections.ebpf.microseg.tests.harness.netlab import Lab, ifindex

SUBNET = "198.18.108"
GHOST = SUBNET + ".99"
GHOST_MAC = "02:00:00:00:00:99"

# Sends one ARP reply "IP is at <our eth0 MAC>" to TARGET_IP/TARGET_MAC from a raw socket.
ARP_SPOOF = textwrap.dedent("""
    import socket, struct, sys
    claimed, target_ip, target_mac = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3].replace(":", ""))
    own = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("eth0", 0))
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + own + socket.inet_aton(claimed) + \\
        target_mac + socket.inet_aton(target_ip)
    sock.send(target_mac + own + struct.pack("!H", 0x0806) + body + b"\\0" * 18)
    print("sent")
""")

BROADCAST_LISTEN = textwrap.dedent("""
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", int(sys.argv[1]))); sock.settimeout(float(sys.argv[2]))
    print("listening", flush=True)
    try:
        print(sock.recvfrom(64)[0].decode(), flush=True)
    except socket.timeout:
        print("nothing", flush=True)
""")

BROADCAST_SEND = textwrap.dedent("""
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
""")


def mac_in(ctr):
    return ctr.run("cat", "/sys/class/net/eth0/address").stdout.strip()


@pytest.fixture(scope="module")
def attached():
    lab = Lab(subnet=SUBNET, names=("web", "db", "oth"))
    dp = None
    try:
        dp = Datapath(sizes={"session_map_size": 8192})
        lab.attach(dp.fds, dp.pin_path)
        lab.wait_links()
        lab["db"].serve("tcp", 5432)
        yield lab, dp
    finally:
        lab.destroy()
        if dp:
            dp.close()


def bind_endpoints(lab, dp, checks=True):
    dp.reset()
    dp.maps.clear("endpoint_map")
    if not checks:
        return
    dp.set_config(flags=_abi.MS_CFG_ANTISPOOF)
    for ctr in lab.containers.values():
        dp.maps.update("endpoint_map", _maps.U32(ifindex(ctr.host_if)),
                       _maps.EndpointValue(ip=_maps.ip_to_u32(ctr.address), prefixlen=24))


def neighbour_mac(ctr, address):
    out = ctr.run("ip", "neigh", "show", address, "dev", "eth0").stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def spoof(lab):
    """oth claims db's address towards web; returns web's neighbour entry for db after."""
    web, db, oth = lab["web"], lab["db"], lab["oth"]
    web.run("ip", "neigh", "flush", "dev", "eth0")
    assert web.probe("tcp", db.address, 5432) == "ok"          # web learns db's real MAC
    assert neighbour_mac(web, db.address) == mac_in(db)
    time.sleep(1.2)    # past the neighbour entry's locktime: a reply may now replace it
    assert oth.run(sys.executable, "-c", ARP_SPOOF, db.address, web.address,
                   mac_in(web)).stdout.strip() == "sent"
    time.sleep(0.2)
    return neighbour_mac(web, db.address)


def test_arp_spoof_redirects_traffic_without_the_checks(attached):
    """The control: with no endpoints bound, the spoof works (the test can fail)."""
    lab, dp = attached
    bind_endpoints(lab, dp, checks=False)
    assert spoof(lab) == mac_in(lab["oth"])


def test_arp_spoof_is_dropped_and_web_keeps_reaching_db(attached):
    lab, dp = attached
    bind_endpoints(lab, dp)
    assert spoof(lab) == mac_in(lab["db"])
    assert dp.stats()["arp_spoof_drops"] == 1
    assert lab["web"].probe("tcp", lab["db"].address, 5432) == "ok"
    assert lab["web"].probe("icmp", lab["oth"].address) == "ok"      # legitimate ARP works


def test_flooded_unknown_unicast_is_not_decided_at_other_ports(attached):
    lab, dp = attached
    bind_endpoints(lab, dp)
    web = lab["web"]
    web.run("ip", "neigh", "replace", GHOST, "lladdr", GHOST_MAC, "dev", "eth0", "nud",
            "permanent")
    try:
        assert web.probe("udp", GHOST, 9999, 0.3) == "fail"
    finally:
        web.run("ip", "neigh", "del", GHOST, "dev", "eth0", check=False)
    others = set(ifindex(lab[name].host_if) for name in ("db", "oth"))
    ghost = _maps.ip_to_u32(GHOST)
    sessions = [(k, v) for k, v in dp.sessions() if ghost in (k.src_ip, k.dst_ip)]
    assert sessions and all(v.ifindex == ifindex(web.host_if) for _k, v in sessions), \
        [(v.ifindex, others) for _k, v in sessions]
    assert dp.stats()["not_for_endpoint"] >= 2         # at db's port and at oth's


def test_subnet_broadcast_still_reaches_containers(attached):
    lab, dp = attached
    bind_endpoints(lab, dp)
    listener = subprocess.Popen(["ip", "netns", "exec", lab["db"].netns, sys.executable, "-c",
                                 BROADCAST_LISTEN, "7777", "3"], stdout=subprocess.PIPE,
                                universal_newlines=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        lab["web"].run(sys.executable, "-c", BROADCAST_SEND, SUBNET + ".255", "7777")
        assert listener.stdout.readline().strip() == "hello"
    finally:
        listener.wait(timeout=10)
        listener.stdout.close()


# Tags every IPv4 frame the container sends with VLAN 10 the way a VLAN device on a veth
# does: in skb metadata (this kernel has neither the 8021q module nor act_vlan).
VLAN_PUSH = """
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
int push_vlan(struct __sk_buff *skb)
{
    if (skb->protocol == bpf_htons(ETH_P_IP))
        bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), 10);
    return TC_ACT_OK;
}
"""


@contextlib.contextmanager
def route_in(netns):
    """An IPRoute socket opened inside netns (the monitor's own way in)."""
    ipr = _endpoints.open_route_in("/run/netns/%s" % netns)
    try:
        yield ipr
    finally:
        ipr.close()


def test_offloaded_vlan_tag_follows_the_other_l3_mode(attached):
    """The host-side hook must not police a tagged frame's inner packet as the container's
    own traffic: an offloaded tag follows the other-L3 mode like an in-band one."""
    from bcc import BPF   # pylint: disable=import-outside-toplevel
    lab, dp = attached
    bind_endpoints(lab, dp, checks=False)
    web = lab["web"]
    with _kernel_headers.headers_environment(_kernel_headers.find_kernel_headers()):
        pusher = BPF(text=VLAN_PUSH.encode())
    fn = pusher.load_func(b"push_vlan", BPF.SCHED_CLS)
    web.run("ip", "route", "add", "198.18.109.0/24", "dev", "eth0")
    web.run("ip", "neigh", "replace", "198.18.109.20", "lladdr", GHOST_MAC, "dev", "eth0",
            "nud", "permanent")
    with route_in(web.netns) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        _netlink.add_clsact(ipr, index)
        try:
            _netlink.attach(ipr, index, "egress", fn.fd, "msvlanpush")
            dp.set_config(other_l3_mode=1)
            web.probe("udp", "198.18.109.20", 9999, 0.3)
            stats = dp.stats()
            assert stats["vlan_tagged"] >= 1 and stats["non_ipv4_dropped"] >= 1
            far = _maps.ip_to_u32("198.18.109.20")
            assert not [k for k, _v in dp.sessions() if k.dst_ip == far]
            dp.maps.reset_stats()
            dp.set_config(other_l3_mode=0)
            web.probe("udp", "198.18.109.20", 9999, 0.3)
            assert dp.stats()["vlan_tagged"] >= 1 and dp.stats()["non_ipv4_passed"] >= 1
        finally:
            _netlink.del_clsact(ipr, index)
            web.run("ip", "route", "del", "198.18.109.0/24", "dev", "eth0", check=False)
            pusher.cleanup()

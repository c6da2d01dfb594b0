# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stateful core against a hostile peer (docs/architecture.md section 2), on the real program.

Container web (W) and its peer db (D). Every test asks: which packet, from which side,
could change another flow's verdict? `dp.egress` runs the hook that sees what web sends,
`dp.ingress` the one that sees what it receives.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import time
import uuid

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _sessions
from ansible_collections.ebpf.microseg.tests.harness import packets as P
from ansible_collections.ebpf.microseg.tests.harness.netlab import ifindex, sh

W, D, ROUTER, OTHER = "198.18.1.10", "198.18.2.10", "198.18.9.1", "198.18.1.11"
TCP, UDP, ICMP = 6, 17, 1
DENY_BOTH = {"egress": "deny", "ingress": "deny"}


def tcp_w(dp, flags, sport=40000, dport=5432, seq=100, ack=0, payload=b""):
    """web sends (egress hook)."""
    return dp.egress(P.tcp_frame(W, D, sport, dport, flags, seq, ack, payload))


def tcp_d(dp, flags, sport=5432, dport=40000, seq=500, ack=0, payload=b""):
    """web receives from db (ingress hook)."""
    return dp.ingress(P.tcp_frame(D, W, sport, dport, flags, seq, ack, payload))


POISON = {
    "ack": lambda: P.tcp_frame(D, W, 5432, 40000, P.ACK, 500, 101),
    "syn-ack": lambda: P.tcp_frame(D, W, 5432, 40000, P.SYN | P.ACK, 500, 101),
    "rst": lambda: P.tcp_frame(D, W, 5432, 40000, P.RST, 500, 0),
    "udp": lambda: P.udp_frame(D, W, 5432, 40000),
}


# ---- session poisoning ---------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(POISON))
def test_peer_packet_does_not_block_the_containers_own_flow(dp, kind):
    """db sends one packet to web:40000 (denied); web's allowed flow from 40000 still works."""
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=50)   # web -> db allowed
    for _spoof in range(3):
        assert not dp.ingress(POISON[kind]())
    assert not dp.sessions(), "a denied packet left a session"
    if kind == "udp":
        assert dp.egress(P.udp_frame(W, D, 40000, 5432))
        assert dp.ingress(P.udp_frame(D, W, 5432, 40000))    # the reply
    else:
        assert tcp_w(dp, P.SYN, seq=100)
        assert tcp_d(dp, P.SYN | P.ACK, seq=500, ack=101)
        assert tcp_w(dp, P.ACK, seq=101, ack=501)
        assert _abi.TCP_STATES[dp.session(W, D, 40000, 5432, TCP).state] == "ESTABLISHED"
    (key, value), = dp.sessions()
    assert value.direction == _abi.MS_DIR_EGRESS and value.action == _abi.MS_ACTION_ALLOW
    assert value.policy_id == 50
    assert dp.stats()["denied_packets"] == 3


@pytest.mark.parametrize("kind", sorted(POISON))
def test_container_packet_does_not_block_the_peers_own_flow(dp, kind):
    """The mirror image: web (the hostile one) sends to db:40000 first; db's allowed
    connection from 40000 to web:5432 still works."""
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "ingress", "allow", policy_id=51)  # db -> web allowed
    mirror = POISON[kind]()
    # The same bytes with the addresses swapped: web -> db, sent at web's egress hook.
    frame = bytearray(mirror)
    frame[26:30], frame[30:34] = mirror[30:34], mirror[26:30]
    ports = mirror[34:38]
    frame[34:36], frame[36:38] = ports[2:4], ports[0:2]
    for _spoof in range(3):
        assert not dp.egress(bytes(frame))
    assert not dp.sessions()
    if kind == "udp":
        assert dp.ingress(P.udp_frame(D, W, 40000, 5432))
        assert dp.egress(P.udp_frame(W, D, 5432, 40000))
    else:
        assert dp.ingress(P.tcp_frame(D, W, 40000, 5432, P.SYN, 100))
        assert dp.egress(P.tcp_frame(W, D, 5432, 40000, P.SYN | P.ACK, 500, 101))
        assert dp.ingress(P.tcp_frame(D, W, 40000, 5432, P.ACK, 101, 501))
    (key, value), = dp.sessions()
    assert value.direction == _abi.MS_DIR_INGRESS and value.policy_id == 51


def test_peer_pickup_cannot_carry_the_containers_denied_syn(dp):
    """db may reach web (ingress allowed) but web may not open to db. db's mid-stream ACK
    is picked up as db's flow; web's bare SYN on those ports is web's own new flow: denied,
    and db's session is left as it was."""
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "ingress", "allow", policy_id=52)
    assert tcp_d(dp, P.ACK, seq=500, ack=101)
    before = dp.session(W, D, 40000, 5432, TCP)
    assert before.flags & _abi.SESSION_FLAG_PICKUP and before.direction == _abi.MS_DIR_INGRESS
    assert not tcp_w(dp, P.SYN, seq=100)
    after = dp.session(W, D, 40000, 5432, TCP)
    assert (after.packets, after.state, after.direction, after.last_seen) == \
        (before.packets, before.state, before.direction, before.last_seen)
    assert dp.stats()["reverse_new_flows"] == 1
    assert tcp_w(dp, P.ACK, seq=101, ack=501)    # a reply within db's flow still passes


def _cut(dp, new_rules):
    """Write new_rules(policy_set) into the inactive set and flip to it."""
    new_rules(dp.policy_set ^ 1)
    dp.bump_epoch()


def test_cut_udp_flow_is_no_trap_for_the_other_side(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=60)
    assert dp.egress(P.udp_frame(W, D, 40000, 53))

    def rules(ps):
        dp.add_remote_cidr(D + "/32", "egress", "deny", policy_id=61, policy_set=ps)
        dp.add_remote_cidr(D + "/32", "ingress", "allow", policy_id=62, policy_set=ps)
    _cut(dp, rules)
    assert not dp.egress(P.udp_frame(W, D, 40000, 53))         # web's flow is cut
    sess = dp.session(W, D, 40000, 53, UDP)
    assert sess.action == _abi.MS_ACTION_DENY and sess.policy_id == 61
    # db's own flow on the same ports is decided as db's: allowed, it takes the slot over.
    assert dp.ingress(P.udp_frame(D, W, 53, 40000))
    sess = dp.session(W, D, 40000, 53, UDP)
    assert sess.action == _abi.MS_ACTION_ALLOW and sess.direction == _abi.MS_DIR_INGRESS
    assert sess.policy_id == 62
    assert dp.stats()["reverse_new_flows"] == 1


def _handshake(dp, policy_id):
    """web connects 40000 -> db:5432, allowed by an egress rule, under default deny."""
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=policy_id)
    assert tcp_w(dp, P.SYN, seq=100)
    assert tcp_d(dp, P.SYN | P.ACK, seq=500, ack=101)
    assert tcp_w(dp, P.ACK, seq=101, ack=501)


def test_cut_tcp_flow_drops_its_packets_but_not_the_other_sides_new_connection(dp):
    _handshake(dp, 63)

    def rules(ps):
        dp.add_remote_cidr(D + "/32", "egress", "deny", policy_id=64, policy_set=ps)
        dp.add_remote_cidr(D + "/32", "ingress", "allow", policy_id=65, policy_set=ps)
    _cut(dp, rules)
    assert not tcp_d(dp, P.ACK, seq=501, ack=101)      # the cut connection, either side
    assert not tcp_w(dp, P.ACK, seq=101, ack=501)
    assert tcp_d(dp, P.SYN, seq=9000)                   # db opens its own: allowed
    sess = dp.session(W, D, 40000, 5432, TCP)
    assert _abi.TCP_STATES[sess.state] == "SYN_SENT" and sess.direction == _abi.MS_DIR_INGRESS
    assert sess.policy_id == 65 and sess.seq_init == 9000
    assert tcp_w(dp, P.SYN | P.ACK, seq=700, ack=9001)


def test_denied_port_reuse_leaves_no_session(dp):
    """A SYN reusing a closed session's ports is a new flow; denied, it removes the old
    session rather than leaving a deny entry behind."""
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=66)
    assert tcp_w(dp, P.SYN, seq=100)
    assert tcp_d(dp, P.RST | P.ACK, seq=0, ack=101)
    assert dp.pressure().total_sessions == 1

    def rules(ps):
        dp.add_remote_cidr(D + "/32", "egress", "deny", policy_id=67, policy_set=ps)
    _cut(dp, rules)
    assert not tcp_w(dp, P.SYN, seq=5000)
    assert not dp.sessions()
    assert dp.pressure().total_sessions == 0
    assert dp.pressure().syn_sent_count == 0


# ---- degradation: an explicit deny holds -------------------------------------------------

def _critical(dp, passthrough="default_only"):
    dp.set_config(default_action=DENY_BOTH, pressure_warn_sessions=1, pressure_crit_sessions=1,
                  degraded_passthrough=_abi.PASSTHROUGH_MODES[passthrough])
    dp.maps.write_pressure(_maps.MapPressure(total_sessions=1, last_check=time.monotonic_ns()))


def _quarantine(dp):
    """Every address, egress, for web only: the rule incident response writes."""
    dp.add_remote_cidr("0.0.0.0/0", "egress", next_class=700)
    dp.add_local_cidr(700, W + "/32", "deny", policy_id=70)


def test_quarantine_holds_under_critical_pressure(dp):
    _critical(dp)
    _quarantine(dp)
    assert not dp.egress(P.udp_frame(W, D, 40000, 53))       # DNS: the deny rule holds
    assert not dp.egress(P.icmp_frame(W, D))                  # ICMP too
    assert dp.egress(P.udp_frame(OTHER, D, 40000, 53))       # default deny: the seed's DNS pass
    assert dp.egress(P.icmp_frame(OTHER, D))
    assert not dp.egress(P.udp_frame(OTHER, D, 40000, 80))   # the rest drops
    stats = dp.stats()
    assert stats["degraded_rule_drops"] == 2
    assert stats["degraded_passthrough"] == 2
    assert stats["map_full_drops"] == 3
    assert dp.rule_hits(70) == 2
    assert not dp.sessions()


@pytest.mark.parametrize("mode,quarantined,default", [
    ("always", True, True), ("never", False, False), ("default_only", False, True)])
def test_degraded_passthrough_modes(dp, mode, quarantined, default):
    _critical(dp, mode)
    _quarantine(dp)
    assert dp.egress(P.udp_frame(W, D, 40000, 53)) is quarantined
    assert dp.egress(P.udp_frame(OTHER, D, 40000, 53)) is default
    assert dp.egress(P.icmp_frame(OTHER, D)) is default


def test_without_pressure_quarantine_and_default_deny_drop_dns(dp):
    dp.set_config(default_action=DENY_BOTH)
    _quarantine(dp)
    assert not dp.egress(P.udp_frame(W, D, 40000, 53))
    assert not dp.egress(P.udp_frame(OTHER, D, 40000, 53))
    assert dp.stats()["degraded_passthrough"] == 0


# ---- ICMP errors are related -------------------------------------------------------------

def _established_tcp(dp):
    _handshake(dp, 80)
    return P.ip_packet(P.tcp_frame(W, D, 40000, 5432, P.ACK | P.PSH, 101, 501, b"x" * 1400))


@pytest.mark.parametrize("sender,kind,code", [
    (ROUTER, 3, 4),     # fragmentation needed, from a router on the path
    (D, 3, 3),          # port unreachable, from the peer
    (ROUTER, 11, 0),    # TTL exceeded in transit
    (ROUTER, 12, 0),    # parameter problem
])
def test_icmp_error_for_a_tracked_tcp_flow_passes_and_creates_nothing(dp, sender, kind, code):
    quoted = _established_tcp(dp)
    before = dp.sessions()
    assert dp.ingress(P.icmp_error(sender, W, quoted, kind, code))
    after = dp.sessions()
    assert [(k.pack(), v.last_seen, v.packets) for k, v in after] == \
        [(k.pack(), v.last_seen, v.packets) for k, v in before]
    assert dp.stats()["icmp_related"] == 1


def test_icmp_errors_for_udp_and_echo_and_from_the_container(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=81)
    dp.add_remote_cidr(OTHER + "/32", "ingress", "allow", policy_id=82)
    udp = P.udp_frame(W, D, 40001, 53)
    assert dp.egress(udp)
    assert dp.ingress(P.icmp_error(D, W, P.ip_packet(udp), 3, 3))            # port unreachable
    ping = P.icmp_frame(W, D, ident=77)
    assert dp.egress(ping)
    assert dp.ingress(P.icmp_error(ROUTER, W, P.ip_packet(ping), 11, 0))     # traceroute
    # web is the server of OTHER's flow and reports an error about it: the egress side.
    inbound = P.udp_frame(OTHER, W, 5000, 9000)
    assert dp.ingress(inbound)
    assert dp.egress(P.icmp_error(W, OTHER, P.ip_packet(inbound), 3, 3))
    assert dp.stats()["icmp_related"] == 3
    assert len(dp.sessions()) == 3


def test_icmp_error_without_a_session_is_decided_by_policy(dp):
    dp.set_config(default_action=DENY_BOTH)
    untracked = P.ip_packet(P.tcp_frame(W, D, 40000, 5432, P.ACK, 1, 1))
    assert not dp.ingress(P.icmp_error(ROUTER, W, untracked))
    assert dp.stats()["icmp_related"] == 0
    # Allowed by policy, it passes, and still creates no session.
    dp.add_remote_cidr(ROUTER + "/32", "ingress", "allow", policy_id=83)
    assert dp.ingress(P.icmp_error(ROUTER, W, untracked))
    assert not dp.sessions()


def test_icmp_error_must_be_addressed_to_the_sender_of_what_it_quotes(dp):
    """An error quoting web's flow, sent to another container, is not related to it."""
    quoted = _established_tcp(dp)
    assert not dp.ingress(P.icmp_error(ROUTER, OTHER, quoted))
    assert dp.stats()["icmp_related"] == 0


def test_icmp_error_for_a_cut_flow_is_dropped(dp):
    quoted = _established_tcp(dp)

    def rules(ps):
        dp.add_remote_cidr(D + "/32", "egress", "deny", policy_id=84, policy_set=ps)
    _cut(dp, rules)
    assert not dp.ingress(P.icmp_error(ROUTER, W, quoted))
    assert dp.stats()["icmp_related"] == 1
    assert dp.session(W, D, 40000, 5432, TCP).policy_id == 84


@pytest.mark.parametrize("cut", [4, 12, 20, 27])
def test_truncated_quote_is_not_related(dp, cut):
    """The quote must hold the whole inner IP header and 8 bytes of ports: bounds checked
    against the IP total length, not only the frame (Ethernet pads short frames)."""
    quoted = _established_tcp(dp)
    frame = P.icmp_error(ROUTER, W, quoted[:cut] if cut > 20 else quoted)
    if cut <= 20:
        total = 20 + 8 + cut
        frame = frame[:16] + bytes([total >> 8, total & 0xff]) + frame[18:]
    assert not dp.ingress(frame)
    assert dp.stats()["icmp_related"] == 0


# ---- per-endpoint quotas -------------------------------------------------------------------

@pytest.fixture
def endpoints():
    """Two real interfaces (a veth pair) for PROG_TEST_RUN's ctx ifindex: the kernel
    checks that it exists."""
    tag = "ms" + uuid.uuid4().hex[:6]
    names = [tag + "a", tag + "b"]
    try:
        sh("ip", "link", "add", names[0], "type", "veth", "peer", "name", names[1])
        yield [ifindex(name) for name in names]
    finally:
        sh("ip", "link", "del", names[0], check=False)


def usage_of(dp, ifindex):
    return dp.maps.lookup("endpoint_usage_map", _maps.U32(ifindex))


def test_half_open_quota_drops_only_the_flooding_endpoints_syns(dp, endpoints):
    flooder, other = endpoints
    dp.set_config(endpoint_half_open_quota=3, syn_flood_threshold=100)
    for port in range(3):
        assert dp.egress(P.tcp_frame(W, D, 50000 + port, 80, P.SYN), ifindex=flooder)
    assert not dp.egress(P.tcp_frame(W, D, 50010, 80, P.SYN), ifindex=flooder)
    assert dp.egress(P.tcp_frame(OTHER, D, 50010, 80, P.SYN), ifindex=other)
    assert (usage_of(dp, flooder).half_open, usage_of(dp, flooder).syn_quota_drops) == (3, 1)
    assert (usage_of(dp, other).half_open, usage_of(dp, other).sessions) == (1, 1)
    assert dp.stats()["endpoint_syn_drops"] == 1
    assert dp.pressure().syn_sent_count == 4       # the host-wide count is kept as well
    # A handshake that moves on gives its half-open slot back.
    assert dp.ingress(P.tcp_frame(D, W, 80, 50000, P.SYN | P.ACK, 1, 1001), ifindex=flooder)
    assert usage_of(dp, flooder).half_open == 2
    assert dp.egress(P.tcp_frame(W, D, 50011, 80, P.SYN), ifindex=flooder)


def test_session_quota_degrades_only_that_endpoint(dp, endpoints):
    busy, other = endpoints
    dp.set_config(endpoint_session_quota=4, default_action={"egress": "allow", "ingress": "deny"})
    for port in range(4):
        assert dp.egress(P.udp_frame(W, D, 30000 + port, 7000), ifindex=busy)
    assert dp.egress(P.udp_frame(W, D, 31000, 7000), ifindex=busy)      # allowed: untracked
    assert dp.session(W, D, 31000, 7000, UDP) is None
    assert dp.egress(P.udp_frame(OTHER, D, 31000, 7000), ifindex=other)  # tracked as usual
    assert dp.session(OTHER, D, 31000, 7000, UDP) is not None
    assert usage_of(dp, busy).degraded_flows == 1 and usage_of(dp, busy).sessions == 4
    assert dp.stats()["endpoint_degraded"] == 1 and dp.stats()["untracked_passes"] == 1
    # Established flows of the busy endpoint are session hits: untouched by the quota.
    assert dp.ingress(P.udp_frame(D, W, 7000, 30000), ifindex=busy)


def test_monitor_recount_rewrites_usage_and_keeps_drop_counters(dp, endpoints):
    busy, other = endpoints
    dp.set_config(endpoint_half_open_quota=2)
    for port in range(2):
        assert dp.egress(P.tcp_frame(W, D, 50000 + port, 80, P.SYN), ifindex=busy)
    assert not dp.egress(P.tcp_frame(W, D, 50005, 80, P.SYN), ifindex=busy)
    # Expiry deletes the half-open sessions behind the data plane's back ...
    dp.maps.clear("session_map")
    assert usage_of(dp, busy).half_open == 2
    sweep = _sessions.sweep(dp.maps, 0, _sessions.timeouts_ns({}))
    written = _sessions.rewrite_endpoint_usage(dp.maps, sweep["by_endpoint"], {busy, other})
    # ... and the recount gives the endpoint its quota back.
    usage = usage_of(dp, busy)
    assert (usage.sessions, usage.half_open, usage.syn_quota_drops) == (0, 0, 1)
    assert written[busy].syn_quota_drops == 1
    assert dp.egress(P.tcp_frame(W, D, 50006, 80, P.SYN), ifindex=busy)
    # An interface that is gone and holds no session is forgotten.
    dp.maps.clear("session_map")
    _sessions.rewrite_endpoint_usage(dp.maps, {}, {other})
    assert usage_of(dp, busy) is None


# ---- floods and pressure: allowed connections keep opening (issue 24) ---------------------

def test_allowed_connection_opens_at_critical_pressure(dp):
    """Untracked, web's SYN passes as allowed; db's SYN-ACK meets no session and would be
    db's new flow (denied): as a reply whose reverse is allowed, it passes."""
    _critical(dp)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=90)
    assert tcp_w(dp, P.SYN, seq=100)
    assert tcp_d(dp, P.SYN | P.ACK, seq=500, ack=101)
    assert tcp_w(dp, P.ACK, seq=101, ack=501)
    assert tcp_d(dp, P.ACK | P.PSH, seq=501, ack=101, payload=b"row")
    assert dp.egress(P.udp_frame(W, D, 40001, 5353))
    assert dp.ingress(P.udp_frame(D, W, 5353, 40001))
    assert not dp.sessions()
    stats = dp.stats()
    assert stats["degraded_replies"] == 3 and stats["untracked_passes"] == 6
    assert dp.rule_hits(90) == 3          # the reverse checks count no rule hit


def test_reflexive_check_lets_no_new_flow_in(dp):
    _critical(dp, "never")     # no DNS/ICMP passthrough: only the reflexive check
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=91)
    assert not tcp_d(dp, P.SYN, seq=500)                          # db's own new connection
    assert not dp.ingress(P.tcp_frame(OTHER, W, 5432, 40000, P.ACK, 1, 1))   # reverse denied
    assert not dp.ingress(P.icmp_frame(D, W, kind=8))             # echo request: not a reply
    assert dp.ingress(P.icmp_frame(D, W, kind=0))                 # echo reply to web's ping
    assert dp.stats()["degraded_replies"] == 1


def test_reflexive_check_only_while_degraded(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr(D + "/32", "egress", "allow", policy_id=92)
    assert not tcp_d(dp, P.SYN | P.ACK, seq=500, ack=101)     # no session, not degraded
    assert dp.stats()["degraded_replies"] == 0


def test_a_stale_count_decays_without_the_monitor(dp):
    """The data plane cannot see sessions end; with no recount for 5 s its count falls by
    a quarter per second, so a burst does not pin the host at critical."""
    dp.set_config(pressure_warn_sessions=700, pressure_crit_sessions=900)
    dp.maps.write_pressure(_maps.MapPressure(total_sessions=1000, last_check=1))
    assert dp.egress(P.udp_frame(W, D, 40000, 7000))        # one decay step, then the flow
    pressure = dp.pressure()
    assert pressure.total_sessions == 1000 - 250 + 1 and pressure.pressure_level == 1
    assert dp.session(W, D, 40000, 7000, UDP) is not None   # tracked again
    assert dp.egress(P.udp_frame(W, D, 40001, 7000))        # within the same second: no step
    assert dp.pressure().total_sessions == 752
    # A fresh recount (the monitor is there): no decay.
    dp.maps.write_pressure(_maps.MapPressure(total_sessions=1000, last_check=time.monotonic_ns()))
    assert dp.egress(P.udp_frame(W, D, 40002, 7000))
    assert dp.pressure().total_sessions == 1000 and dp.pressure().pressure_level == 2

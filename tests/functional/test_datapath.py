# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real program on the real kernel, one crafted frame at a time (BPF_PROG_TEST_RUN).

Container C (198.18.1.10) talks to remote R (198.18.2.20). `dp.egress(frame)` runs the
program at the hook that sees what the container sends, `dp.ingress` at the one that sees
what it receives; both return True when the frame passes.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils._ringbuf import RingBuffer
from ansible_collections.ebpf.microseg.tests.harness import packets as P
from ansible_collections.ebpf.microseg.tests.harness.datapath import Datapath

C, R, R2 = "198.18.1.10", "198.18.2.20", "198.18.3.30"
TCP, UDP, ICMP = 6, 17, 1
DENY_BOTH = {"egress": "deny", "ingress": "deny"}


def state_of(dp, lport=40000, rport=80, local=C, remote=R):
    sess = dp.session(local, remote, lport, rport, TCP)
    assert sess is not None, "no session for %s:%d <-> %s:%d" % (local, lport, remote, rport)
    return _abi.TCP_STATES[sess.state]


def assert_reconciles(stats):
    assert stats["total_packets"] == stats["allowed_packets"] + stats["denied_packets"]
    assert stats["total_bytes"] == stats["allowed_bytes"] + stats["denied_bytes"]


# ---- layer 2 / layer 3 ---------------------------------------------------------------

def test_arp_always_passes_even_with_default_deny(dp):
    dp.set_config(default_action=DENY_BOTH)
    assert dp.egress(P.arp_frame())
    assert dp.ingress(P.arp_frame())
    stats = dp.stats()
    assert stats["non_ipv4_passed"] == 2
    assert stats["allowed_packets"] == 2
    assert_reconciles(stats)


@pytest.mark.parametrize("mode,passes", [(0, True), (1, False)])
def test_ipv6_follows_its_mode(dp, mode, passes):
    dp.set_config(ipv6_mode=mode)
    assert dp.egress(P.ipv6_frame()) is passes
    assert dp.ingress(P.ipv6_frame()) is passes
    stats = dp.stats()
    assert stats["non_ipv4_passed" if passes else "non_ipv4_dropped"] == 2
    assert not dp.sessions()


@pytest.mark.parametrize("mode,passes", [(0, True), (1, False)])
def test_other_ethertypes_follow_their_mode(dp, mode, passes):
    """An 802.1Q-tagged IPv4 frame must not slip past as 'not IP'."""
    dp.set_config(other_l3_mode=mode)
    assert dp.egress(P.vlan_frame()) is passes


def _claims(frame, tot_len):
    """Rewrite the IPv4 total length (the frame keeps its Ethernet padding)."""
    return frame[:16] + bytes([tot_len >> 8, tot_len & 0xff]) + frame[18:]


# PROG_TEST_RUN refuses frames shorter than Ethernet + IPv4 headers (EINVAL), so a cut
# IP header is shown by a total length shorter than the header itself.
@pytest.mark.parametrize("frame", [
    _claims(P.tcp_frame(C, R, 1, 2, P.SYN), 16),                          # tot_len < ihl
    P.ether(P.ETH_P_IP, P.ipv4(C, R, 6, P.tcp(1, 2, P.SYN)[:10]))[:14 + 30],  # cut TCP
    P.ether(P.ETH_P_IP, P.ipv4(C, R, 17, b"\0\0\0\0"))[:14 + 24],        # cut UDP
    _claims(P.tcp_frame(C, R, 1, 2, P.SYN), 30),                          # padded, TCP cut
    _claims(P.udp_frame(C, R, 1, 2, b""), 24),                            # padded, UDP cut
], ids=["short-ip", "short-tcp", "short-udp", "padded-tcp", "padded-udp"])
def test_truncated_frames_are_dropped_and_counted(dp, frame):
    assert not dp.egress(frame)
    stats = dp.stats()
    assert stats["truncated_drops"] == 1
    assert stats["denied_packets"] == 1
    assert not dp.sessions()


def test_ip_header_with_bad_ihl_is_dropped(dp):
    frame = bytearray(P.tcp_frame(C, R, 40000, 80, P.SYN))
    frame[14] = 0x44  # ihl 4 < 5
    assert not dp.egress(bytes(frame))
    assert dp.stats()["truncated_drops"] == 1


def test_ip_options_are_skipped_via_ihl(dp):
    """With 4 bytes of options the ports sit 24 bytes in: the exact rule must still match."""
    dp.set_config(default_action=DENY_BOTH)
    dp.add_exact(C, R, 40000, 5432, TCP, "egress", "allow", policy_id=9)
    frame = P.tcp_frame(C, R, 40000, 5432, P.SYN, options=b"\x01\x01\x01\x00")
    assert dp.egress(frame)
    assert dp.rule_hits(9) == 1
    assert state_of(dp, 40000, 5432) == "SYN_SENT"


# ---- default action and sessions ---------------------------------------------------

@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
def test_default_action_per_direction(dp, proto):
    dp.set_config(default_action={"egress": "deny", "ingress": "allow"})
    make = {
        "tcp": lambda s, d: P.tcp_frame(s, d, 40000, 80, P.SYN),
        "udp": lambda s, d: P.udp_frame(s, d, 40000, 53),
        "icmp": P.icmp_frame,
    }[proto]
    assert not dp.egress(make(C, R))
    dp.reset(default_action={"egress": "deny", "ingress": "allow"})
    assert dp.ingress(make(R, C))
    stats = dp.stats()
    assert stats["policy_lookups"] == 1
    assert stats["new_sessions"] == 1


def test_udp_session_is_shared_by_both_directions(dp):
    assert dp.egress(P.udp_frame(C, R, 40000, 53))
    assert dp.ingress(P.udp_frame(R, C, 53, 40000))
    assert dp.ingress(P.udp_frame(R, C, 53, 40000))
    sessions = dp.sessions()
    assert len(sessions) == 1
    key, value = sessions[0]
    assert _maps.u32_to_ip(key.src_ip) == C and key.src_port == 40000
    assert _maps.u32_to_ip(key.dst_ip) == R and key.dst_port == 53
    assert value.packets == 3
    assert value.direction == _abi.MS_DIR_EGRESS
    stats = dp.stats()
    assert stats["new_sessions"] == 1
    assert stats["session_hits"] == 2
    assert stats["policy_lookups"] == 1
    assert_reconciles(stats)


def test_session_created_by_ingress_is_keyed_container_first(dp):
    assert dp.ingress(P.udp_frame(R, C, 5000, 53))
    assert dp.egress(P.udp_frame(C, R, 53, 5000))
    sessions = dp.sessions()
    assert len(sessions) == 1
    key, value = sessions[0]
    assert _maps.u32_to_ip(key.src_ip) == C and key.src_port == 53
    assert value.direction == _abi.MS_DIR_INGRESS
    assert value.flags & _abi.SESSION_FLAG_INGRESS


def test_reply_of_allowed_flow_passes_under_default_deny(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_exact(C, R, 40000, 53, UDP, "egress", "allow", policy_id=3)
    assert dp.egress(P.udp_frame(C, R, 40000, 53))
    assert dp.ingress(P.udp_frame(R, C, 53, 40000))     # reply: session hit
    assert not dp.ingress(P.udp_frame(R, C, 53, 40001))  # not a reply: default deny


def test_denied_first_packet_leaves_no_session(dp):
    """Sessions are for flows that passed: a denied flow is decided again at every packet."""
    dp.set_config(default_action=DENY_BOTH)
    for _attempt in range(3):
        assert not dp.egress(P.udp_frame(C, R, 40000, 9999))
    assert not dp.ingress(P.tcp_frame(R, C, 80, 40001, P.SYN))
    assert not dp.sessions()
    stats = dp.stats()
    assert stats["policy_lookups"] == 4
    assert stats["session_hits"] == 0
    assert stats["denied_packets"] == 4
    assert dp.pressure().total_sessions == 0


def test_icmp_echo_sessions_are_per_identifier(dp):
    """A ping out must not open the way for pings in: sessions key on the echo id."""
    dp.set_config(default_action={"egress": "allow", "ingress": "deny"})
    assert dp.egress(P.icmp_frame(C, R, ident=7))
    assert dp.ingress(P.icmp_frame(R, C, ident=7, kind=0))    # the reply
    assert not dp.ingress(P.icmp_frame(R, C, ident=8))        # R's own ping: denied
    assert not dp.ingress(P.icmp_frame(R, C, ident=7))        # R's ping with C's id too
    keys = sorted((k.src_port, k.dst_port) for k, _v in dp.sessions())
    assert keys == [(7, 7)]
    assert dp.stats()["reverse_new_flows"] == 1


# ---- TCP state machine ---------------------------------------------------------------

def handshake(dp, initiator="container", cport=40000, rport=80):
    """SYN, SYN-ACK, ACK; returns the (orig_send, reply_send) functions."""
    def from_container(flags, seq, ack, payload=b""):
        return dp.egress(P.tcp_frame(C, R, cport, rport, flags, seq, ack, payload))

    def to_container(flags, seq, ack, payload=b""):
        return dp.ingress(P.tcp_frame(R, C, rport, cport, flags, seq, ack, payload))

    if initiator == "container":
        orig, reply = from_container, to_container
    else:
        orig, reply = to_container, from_container
    assert orig(P.SYN, 100, 0)
    assert state_of(dp, cport, rport) == "SYN_SENT"
    assert reply(P.SYN | P.ACK, 500, 101)
    assert state_of(dp, cport, rport) == "SYN_RECV"
    assert orig(P.ACK, 101, 501)
    assert state_of(dp, cport, rport) == "ESTABLISHED"
    assert orig(P.PSH | P.ACK, 101, 501, b"0123456789")
    assert reply(P.ACK, 501, 111)
    assert state_of(dp, cport, rport) == "ESTABLISHED"
    return orig, reply


@pytest.mark.parametrize("initiator", ["container", "remote"])
def test_tcp_close_by_initiator(dp, initiator):
    orig, reply = handshake(dp, initiator)
    assert orig(P.FIN | P.ACK, 111, 501)
    assert state_of(dp) == "FIN_WAIT1"
    assert reply(P.ACK, 501, 112)
    assert state_of(dp) == "FIN_WAIT2"
    assert reply(P.FIN | P.ACK, 501, 112)
    assert state_of(dp) == "TIME_WAIT"
    assert orig(P.ACK, 112, 502)
    assert state_of(dp) == "TIME_WAIT"
    assert dp.stats()["invalid_state_trans"] == 0


@pytest.mark.parametrize("initiator", ["container", "remote"])
def test_tcp_close_by_responder(dp, initiator):
    orig, reply = handshake(dp, initiator)
    assert reply(P.FIN | P.ACK, 501, 111)
    assert state_of(dp) == "CLOSE_WAIT"
    assert orig(P.ACK, 111, 502)
    assert state_of(dp) == "CLOSE_WAIT"
    assert orig(P.FIN | P.ACK, 111, 502)
    assert state_of(dp) == "LAST_ACK"
    assert reply(P.ACK, 502, 112)
    assert state_of(dp) == "CLOSE"
    assert dp.stats()["invalid_state_trans"] == 0


def test_tcp_simultaneous_close(dp):
    orig, reply = handshake(dp)
    assert orig(P.FIN | P.ACK, 111, 501)
    assert reply(P.FIN | P.ACK, 501, 111)   # crosses our FIN: does not ack it
    assert state_of(dp) == "CLOSING"
    assert reply(P.ACK, 502, 112)
    assert state_of(dp) == "TIME_WAIT"


def test_tcp_reset_closes(dp):
    _orig, reply = handshake(dp)
    assert reply(P.RST, 501, 0)
    assert state_of(dp) == "CLOSE"


def test_tcp_invalid_transition_is_counted(dp):
    assert dp.egress(P.tcp_frame(C, R, 40000, 80, P.SYN, 100))
    assert dp.egress(P.tcp_frame(C, R, 40000, 80, P.ACK, 101, 1))  # ACK before any SYN-ACK
    assert dp.ingress(P.tcp_frame(R, C, 80, 40000, P.SYN, 7))       # SYN from the wrong side
    assert dp.stats()["invalid_state_trans"] == 2
    assert state_of(dp) == "SYN_SENT"


def test_tcp_port_reuse_after_close_starts_a_new_flow(dp):
    orig, reply = handshake(dp)
    assert reply(P.RST, 501, 0)
    first_id = dp.session(C, R, 40000, 80, TCP).session_id
    lookups = dp.stats()["policy_lookups"]
    assert orig(P.SYN, 9000, 0)
    sess = dp.session(C, R, 40000, 80, TCP)
    assert _abi.TCP_STATES[sess.state] == "SYN_SENT"
    assert sess.session_id > first_id and sess.packets == 1 and sess.seq_init == 9000
    assert dp.stats()["policy_lookups"] == lookups + 1


def test_mid_stream_tcp_is_picked_up_as_established(dp):
    assert dp.egress(P.tcp_frame(C, R, 40000, 80, P.ACK, 5, 6))
    sess = dp.session(C, R, 40000, 80, TCP)
    assert _abi.TCP_STATES[sess.state] == "ESTABLISHED"
    assert sess.flags & _abi.SESSION_FLAG_PICKUP


# ---- policy lookup -------------------------------------------------------------------

def test_exact_rule_beats_default_in_each_direction(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_exact(C, R, 40000, 5432, TCP, "egress", "allow", policy_id=11)
    dp.add_exact(R, C, 41000, 22, TCP, "ingress", "allow", policy_id=12)
    assert dp.egress(P.tcp_frame(C, R, 40000, 5432, P.SYN))
    assert not dp.egress(P.tcp_frame(C, R, 40001, 5432, P.SYN))       # other source port
    assert dp.ingress(P.tcp_frame(R, C, 41000, 22, P.SYN))
    assert not dp.egress(P.tcp_frame(C, R, 41000, 22, P.SYN))         # wrong direction
    assert dp.rule_hits(11) == 1 and dp.rule_hits(12) == 1
    key = _maps.PolicyKey(src_ip=_maps.ip_to_u32(C), dst_ip=_maps.ip_to_u32(R), src_port=40000,
                          dst_port=5432, protocol=TCP, direction=0, policy_set=dp.policy_set)
    assert dp.maps.lookup("policy_map", key).hit_count == 1


def test_exact_deny_beats_default_allow(dp):
    dp.add_exact(C, R, 40000, 5432, TCP, "egress", "deny", policy_id=5)
    assert not dp.egress(P.tcp_frame(C, R, 40000, 5432, P.SYN))
    assert dp.egress(P.tcp_frame(C, R, 40000, 5433, P.SYN))


def test_remote_cidr_final_verdict(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_remote_cidr("198.18.2.0/24", "egress", "allow", policy_id=21)
    dp.add_remote_cidr("198.18.2.128/25", "egress", "deny", policy_id=22)
    assert dp.egress(P.udp_frame(C, "198.18.2.20", 40000, 53))
    assert not dp.egress(P.udp_frame(C, "198.18.2.200", 40000, 53))   # longer prefix wins
    assert not dp.egress(P.udp_frame(C, "198.18.4.1", 40000, 53))     # miss: default
    assert not dp.ingress(P.udp_frame("198.18.2.20", C, 53, 40001))   # egress-only rule
    assert dp.rule_hits(21) == 1 and dp.rule_hits(22) == 1


def test_full_lpm_chain_remote_local_port_sport(dp):
    """remote /24 -> local /24 -> protocol/port blocks -> source port block."""
    dp.set_config(default_action=DENY_BOTH)
    cls = dp.policy_set << 1 | _abi.MS_DIR_EGRESS
    dp.add_remote_cidr("198.18.2.0/24", "egress", next_class=100)
    dp.add_local_cidr(100, "198.18.1.0/24", next_class=200)
    dp.add_port_block(200, TCP, 5432, 16, "allow", policy_id=31)          # exactly 5432
    dp.add_port_block(200, TCP, 8192, 13, "log", policy_id=32)            # 8192-8199
    dp.add_port_block(200, UDP, 0, 0, next_class=300)                     # any UDP port ->
    dp.add_sport_block(300, 1024, 6, "allow", policy_id=33)               # sport 1024-2047
    dp.add_port_block(200, None, 0, 0, "deny", policy_id=34)              # any other protocol
    assert cls in (0, 2)
    assert dp.egress(P.tcp_frame(C, R, 40000, 5432, P.SYN))
    assert dp.egress(P.tcp_frame(C, R, 40000, 8195, P.SYN))
    assert not dp.egress(P.tcp_frame(C, R, 40000, 8200, P.SYN))   # tcp, no block
    assert dp.egress(P.udp_frame(C, R, 1500, 9))
    assert not dp.egress(P.udp_frame(C, R, 3000, 9))               # sport outside block
    assert not dp.egress(P.icmp_frame(C, R))                        # any-protocol deny
    assert not dp.egress(P.udp_frame("198.18.9.9", R, 1500, 9))     # local outside /24
    # tcp/8200 has no port block, so the class-wide any-protocol entry decides it too:
    # the compiler covers every protocol and port of a class, a miss is never partial.
    assert [dp.rule_hits(i) for i in (31, 32, 33, 34)] == [1, 1, 1, 2]


def test_policy_set_isolation(dp):
    """Entries of the inactive set are invisible until the epoch flips to them."""
    dp.set_config(default_action=DENY_BOTH)
    inactive = dp.policy_set ^ 1
    dp.add_exact(C, R, 40000, 5432, TCP, "egress", "allow", policy_set=inactive)
    assert not dp.egress(P.tcp_frame(C, R, 40000, 5432, P.SYN))
    dp.bump_epoch()
    assert dp.egress(P.tcp_frame(C, R, 40001, 5432, P.SYN)) is False  # other sport: default
    dp.maps.clear("session_map")
    assert dp.egress(P.tcp_frame(C, R, 40000, 5432, P.SYN))


# ---- policy generation ---------------------------------------------------------------

def test_new_generation_cuts_established_flow_at_next_packet(dp):
    _orig, _reply = handshake(dp)
    keep = P.udp_frame(C, R2, 40000, 53)
    assert dp.egress(keep)
    # Write the new policy into the inactive set, then flip: one 4-byte store.
    inactive = dp.policy_set ^ 1
    dp.add_exact(C, R, 40000, 80, TCP, "egress", "deny", policy_id=41, policy_set=inactive)
    epoch = dp.bump_epoch()
    assert not dp.ingress(P.tcp_frame(R, C, 80, 40000, P.ACK, 501, 111))  # reply direction too
    assert not dp.egress(P.tcp_frame(C, R, 40000, 80, P.ACK, 111, 501))
    assert dp.egress(keep)                                                 # still allowed
    sess = dp.session(C, R, 40000, 80, TCP)
    assert sess.policy_ver == epoch and sess.action == _abi.MS_ACTION_DENY
    assert sess.policy_id == 41
    assert dp.stats()["reevaluations"] == 2


def test_new_generation_can_open_a_denied_flow(dp):
    dp.set_config(default_action=DENY_BOTH)
    assert not dp.egress(P.udp_frame(C, R, 40000, 53))
    dp.add_exact(C, R, 40000, 53, UDP, "egress", "allow", policy_set=dp.policy_set ^ 1)
    dp.bump_epoch()
    assert dp.egress(P.udp_frame(C, R, 40000, 53))


# ---- fragments -----------------------------------------------------------------------

def test_fragmented_udp_passes_when_allowed(dp):
    dp.set_config(default_action=DENY_BOTH)
    dp.add_exact(C, R, 40000, 5000, UDP, "egress", "allow")
    first, second = P.udp_fragments(C, R, 40000, 5000, b"z" * 200)
    assert dp.egress(first)
    assert dp.egress(second)
    stats = dp.stats()
    assert stats["fragments"] == 2 and stats["fragment_drops"] == 0


def test_fragments_of_denied_flow_are_dropped(dp):
    dp.set_config(default_action=DENY_BOTH)
    first, second = P.udp_fragments(C, R, 40000, 5001, b"z" * 200)
    assert not dp.egress(first)
    assert not dp.egress(second)
    assert dp.stats()["fragment_drops"] == 1


def test_orphan_fragment_never_bypasses(dp):
    """A non-first fragment without its first one (the classic bypass) is dropped."""
    _first, second = P.udp_fragments(C, R, 40000, 5000, b"z" * 200, ident=4242)
    assert not dp.egress(second)
    assert dp.stats()["fragment_drops"] == 1


def test_tiny_first_fragment_is_dropped(dp):
    frame = P.ether(P.ETH_P_IP, P.ipv4(C, R, 17, b"\x9c\x40\x13", ident=9, flags_frag=0x2000))
    assert not dp.egress(frame)
    assert dp.stats()["truncated_drops"] == 1


# ---- pressure, degradation, SYN flood ----------------------------------------------

@pytest.fixture
def one_cpu():
    """Pin to one CPU: the session LRU keeps a separate list per CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def small_dp():
    ncpu = len(bpf.possible_cpus())
    dp = Datapath(sizes={"session_map_size": 64 * ncpu})
    try:
        yield dp
    finally:
        dp.close()


def test_critical_pressure_degrades_as_the_seed_says(small_dp, one_cpu):
    dp = small_dp
    dp.reset(pressure_warn_sessions=8, pressure_crit_sessions=12)
    for port in range(12):
        assert dp.egress(P.udp_frame(C, R, 30000 + port, 7000))
    assert dp.pressure().total_sessions == 12
    assert dp.pressure().pressure_level == 1   # warning from 8 on
    # 13th flow: critical now. Allowed traffic passes untracked.
    assert dp.egress(P.udp_frame(C, R, 31000, 7000))
    assert dp.pressure().pressure_level == 2
    assert len(dp.sessions()) == 12
    dp.set_config(default_action=DENY_BOTH)
    assert not dp.egress(P.udp_frame(C, R, 31001, 7000))   # denied: dropped
    assert dp.egress(P.udp_frame(C, R, 31002, 53))         # DNS passes
    assert dp.egress(P.icmp_frame(C, R2))                  # ICMP passes
    stats = dp.stats()
    assert stats["map_full_drops"] == 1
    assert stats["untracked_passes"] == 3
    assert len(dp.sessions()) == 12
    # Established flows keep working under pressure.
    assert dp.ingress(P.udp_frame(R, C, 7000, 30000))


def test_warning_level_still_tracks(small_dp, one_cpu):
    dp = small_dp
    dp.reset(pressure_warn_sessions=2, pressure_crit_sessions=50)
    for port in range(4):
        assert dp.egress(P.udp_frame(C, R, 30000 + port, 7000))
    assert dp.pressure().pressure_level == 1
    assert len(dp.sessions()) == 4


def test_lru_evictions_are_counted_when_full(small_dp, one_cpu):
    dp = small_dp
    dp.reset(session_max=4)   # pretend the map holds 4: the kernel counts what it evicts
    for port in range(6):
        assert dp.egress(P.udp_frame(C, R, 30000 + port, 7000))
    assert dp.pressure().total_sessions == 4
    assert dp.pressure().evictions == 2
    assert dp.stats()["lru_evictions"] == 2


def test_syn_flood_guard_uses_a_real_syn_sent_count(dp):
    dp.set_config(syn_flood_threshold=3)
    orig, reply = handshake(dp, cport=45000)          # established before the flood
    assert dp.pressure().syn_sent_count == 0           # went down when the handshake went on
    for port in range(3):
        assert dp.egress(P.tcp_frame(C, R, 50000 + port, 80, P.SYN))
    assert dp.pressure().syn_sent_count == 3
    assert not dp.egress(P.tcp_frame(C, R, 50010, 80, P.SYN))   # over the threshold
    assert dp.stats()["tcp_syn_floods"] == 1
    assert orig(P.PSH | P.ACK, 111, 501, b"still here")          # established flow unaffected
    # One half-open connection completes: the count drops and new SYNs pass again.
    assert dp.ingress(P.tcp_frame(R, C, 80, 50000, P.SYN | P.ACK, 1, 1001))
    assert dp.pressure().syn_sent_count == 2
    assert dp.egress(P.tcp_frame(C, R, 50011, 80, P.SYN))
    # A reset of a half-open connection also lowers it.
    assert dp.ingress(P.tcp_frame(R, C, 80, 50001, P.RST, 0))
    assert dp.pressure().syn_sent_count == 2


# ---- LOG action ----------------------------------------------------------------------

def test_log_action_allows_and_emits_rate_limited_events(dp):
    dp.set_config(default_action=DENY_BOTH, log_rate_per_sec=3)
    fd = dp.maps.fd("log_events")
    with RingBuffer(fd, dp.maps.info("log_events")["max_entries"]) as ring:
        ring.drain()
        for port in range(5):
            dp.add_exact(C, R, 40000 + port, 443, TCP, "egress", "log", policy_id=77)
        for port in range(5):
            assert dp.egress(P.tcp_frame(C, R, 40000 + port, 443, P.SYN))
        assert dp.egress(P.tcp_frame(C, R, 40000, 443, P.ACK, 101, 1))   # same flow: no event
        records = ring.drain()
    events = [_maps.LogEvent.unpack(r) for r in records]
    assert len(events) == 3
    ev = events[0]
    assert (_maps.u32_to_ip(ev.src_ip), _maps.u32_to_ip(ev.dst_ip)) == (C, R)
    assert ev.dst_port == 443 and ev.protocol == TCP and ev.policy_id == 77
    assert ev.action == _abi.MS_ACTION_LOG and ev.direction == _abi.MS_DIR_EGRESS
    stats = dp.stats()
    assert stats["log_events"] == 3 and stats["log_suppressed"] == 2
    assert stats["allowed_packets"] == 6


# ---- anti-spoofing -------------------------------------------------------------------

def test_antispoofing_drops_foreign_source_addresses(dp):
    """PROG_TEST_RUN runs on loopback (ifindex 1): bind that 'interface' to C."""
    dp.set_config(flags=_abi.MS_CFG_ANTISPOOF)
    dp.maps.update("endpoint_map", _maps.U32(1),
                   _maps.EndpointValue(ip=_maps.ip_to_u32(C)))
    assert dp.egress(P.udp_frame(C, R, 40000, 53))
    assert not dp.egress(P.udp_frame("198.18.1.11", R, 40000, 53))
    assert dp.stats()["spoof_drops"] == 1


def _endpoint(dp, prefixlen=0, mac=None):
    """Bind loopback (PROG_TEST_RUN's interface, ifindex 1) to container C."""
    dp.set_config(flags=_abi.MS_CFG_ANTISPOOF)
    value = _maps.EndpointValue(ip=_maps.ip_to_u32(C), prefixlen=prefixlen)
    if mac:
        value.flags = _abi.ENDPOINT_FLAG_MAC
        value.mac[:] = list(mac)
    dp.maps.update("endpoint_map", _maps.U32(1), value)


def test_receive_side_drops_what_is_not_addressed_to_the_endpoint(dp):
    """Flooded unknown unicast for another container is dropped before any session."""
    _endpoint(dp, prefixlen=24)
    assert not dp.ingress(P.udp_frame(R, "198.18.1.11", 53, 40000))
    assert not dp.ingress(P.tcp_frame(R, "198.18.1.12", 80, 40000, P.SYN))
    assert not dp.sessions()
    assert dp.ingress(P.udp_frame(R, C, 53, 40000))                    # its own
    assert dp.ingress(P.udp_frame(R, "255.255.255.255", 67, 68))       # limited broadcast
    assert dp.ingress(P.udp_frame(R, "198.18.1.255", 137, 137))        # its subnet's
    assert dp.ingress(P.udp_frame(R, "224.0.0.251", 5353, 5353))       # multicast
    assert not dp.ingress(P.udp_frame(R, "198.18.2.255", 137, 137))    # another subnet's
    stats = dp.stats()
    assert stats["not_for_endpoint"] == 3 and stats["spoof_drops"] == 0


def test_without_a_prefix_only_limited_broadcast_passes(dp):
    _endpoint(dp)
    assert not dp.ingress(P.udp_frame(R, "198.18.1.255", 137, 137))
    assert dp.ingress(P.udp_frame(R, "255.255.255.255", 67, 68))


def test_arp_claiming_another_address_is_dropped(dp):
    """oth answering for db's address: the ARP spoof that would redirect web's traffic."""
    _endpoint(dp)
    assert not dp.egress(P.arp_frame(sender="198.18.1.20", target="198.18.1.30", op=2,
                                     tha=P.MAC_B))
    assert not dp.egress(P.arp_frame(sender="198.18.1.20", target="198.18.1.20"))  # gratuitous
    assert dp.egress(P.arp_frame(sender=C, target="198.18.1.30"))                 # its own
    assert dp.egress(P.arp_frame(sender=C, target=C))                             # gratuitous
    assert dp.egress(P.arp_frame(sender="0.0.0.0", target=C))                     # RFC 5227 probe
    stats = dp.stats()
    assert stats["arp_spoof_drops"] == 2 and stats["non_ipv4_passed"] == 3


def test_arp_with_a_foreign_hardware_address_is_dropped_when_the_mac_is_known(dp):
    _endpoint(dp, mac=P.MAC_A)
    assert dp.egress(P.arp_frame(sender=C, target=R, sha=P.MAC_A))
    assert not dp.egress(P.arp_frame(sender=C, target=R, sha=P.MAC_B))
    assert dp.stats()["arp_spoof_drops"] == 1


def test_received_arp_must_ask_for_the_endpoint_or_be_gratuitous(dp):
    _endpoint(dp)
    assert dp.ingress(P.arp_frame(sender=R, target=C))                     # who-has C
    assert dp.ingress(P.arp_frame(sender=R, target=R))                     # R announces itself
    assert not dp.ingress(P.arp_frame(sender=R, target="198.18.1.11"))     # for someone else
    assert not dp.ingress(P.arp_frame(sender=R, target="198.18.1.11", op=2, tha=P.MAC_A))
    assert dp.stats()["not_for_endpoint"] == 2


def test_malformed_arp_is_dropped_where_endpoints_are_checked(dp):
    _endpoint(dp)
    frame = bytearray(P.arp_frame(sender=C, target=R))
    frame[14 + 4] = 8      # hardware address length 8: not Ethernet ARP
    assert not dp.egress(bytes(frame))
    dp.set_config(flags=0)
    assert dp.egress(bytes(frame))    # without the checks ARP passes as before


def test_counters_reconcile_after_mixed_traffic(dp):
    dp.set_config(default_action={"egress": "allow", "ingress": "deny"})
    frames = [("egress", P.tcp_frame(C, R, 1, 2, P.SYN)), ("ingress", P.udp_frame(R, C, 3, 4)),
              ("egress", P.arp_frame()), ("egress", P.ipv6_frame()),
              ("egress", P.icmp_frame(C, R)), ("ingress", P.icmp_frame(R, C))]
    for direction, frame in frames:
        dp.run(frame, direction)
    stats = dp.stats()
    assert stats["total_packets"] == 6
    assert_reconciles(stats)

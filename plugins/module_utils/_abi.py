# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every constant of files/bpf/microseg.h, once, under its C name.

The header is the source of truth. tests/functional/test_layout.py reads every numeric
#define in it and checks that this module holds the same value under the same name, and
that every table below follows the header's numbering. The struct mirrors are in _maps.py.

Nothing here imports anything: the pure policy model may use it without pulling in
the syscall layer.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

# Direction is always seen from the container.
MS_DIR_EGRESS = 0       # the container sends: TC ingress of the host-side veth
MS_DIR_INGRESS = 1      # the container receives: TC egress of the host-side veth

MS_ACTION_ALLOW = 0
MS_ACTION_DENY = 1
MS_ACTION_LOG = 2       # allow, and emit a rate-limited event

# microseg_config.ipv6_mode and other_l3_mode
MS_L3_ALLOW = 0
MS_L3_DROP = 1

# session_value.state: RFC 793 names, seen from the flow's initiator.
TCP_NONE = 0
TCP_SYN_SENT = 1
TCP_SYN_RECV = 2
TCP_ESTABLISHED = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_CLOSING = 10
TCP_STATE_MAX = 11

# session_value.flags
SESSION_FLAG_INGRESS = 0x0001
SESSION_FLAG_TLS_DETECTED = 0x0002
SESSION_FLAG_HTTP_DETECTED = 0x0004
SESSION_FLAG_DPI_REQUIRED = 0x0008
SESSION_FLAG_SYN_COUNTED = 0x0020
SESSION_FLAG_FIN_ORIG = 0x0040
SESSION_FLAG_PICKUP = 0x0100
SESSION_FLAG_EP_SYN_COUNTED = 0x0200

# microseg_config.flags
MS_CFG_ANTISPOOF = 0x0001
MS_CFG_LEARN_ENDPOINTS = 0x0002

# microseg_config.degraded_passthrough
MS_PASSTHROUGH_DEFAULT_ONLY = 0
MS_PASSTHROUGH_ALWAYS = 1
MS_PASSTHROUGH_NEVER = 2

# ICMP error types that quote the packet they are about (RFC 792).
ICMP_DEST_UNREACH_TYPE = 3
ICMP_TIME_EXCEEDED_TYPE = 11
ICMP_PARAMETERPROB_TYPE = 12

# range_value.flags
RANGE_FLAG_FINAL = 0x0001

# LPM keys: the class bits come first and always match in full.
MS_LPM_CLASS_BITS = 32
MS_LPM_PROTOCOL_BITS = 8
MS_LPM_IP_FULL = MS_LPM_CLASS_BITS + 32
MS_LPM_PORT_FULL = MS_LPM_CLASS_BITS + MS_LPM_PROTOCOL_BITS + 16
MS_LPM_SPORT_FULL = MS_LPM_CLASS_BITS + 16
MS_LPM_CLASS_BASE = 4
MS_LPM_CLASS_SET_BIT = 31


def ms_lpm_root_class(policy_set, direction):
    """MS_LPM_ROOT_CLASS(set, dir): the first range step's class."""
    return (policy_set << 1) | direction


# map_pressure.pressure_level
PRESSURE_NORMAL = 0
PRESSURE_WARNING = 1
PRESSURE_CRITICAL = 2

# log_event.reason
LOG_REASON_NEW_FLOW = 0
LOG_REASON_REEVALUATE = 1

# endpoint_value.flags
ENDPOINT_FLAG_MAC = 0x0001
ENDPOINT_FLAG_LEARNED = 0x0002

# stats_map indexes: the seed's 13 counters first, in its order, then ours.
STAT_TOTAL_PACKETS = 0
STAT_ALLOWED_PACKETS = 1
STAT_DENIED_PACKETS = 2
STAT_TOTAL_BYTES = 3
STAT_ALLOWED_BYTES = 4
STAT_DENIED_BYTES = 5
STAT_NEW_SESSIONS = 6
STAT_POLICY_LOOKUPS = 7
STAT_SESSION_HITS = 8
STAT_MAP_FULL_DROPS = 9
STAT_LRU_EVICTIONS = 10
STAT_TCP_SYN_FLOODS = 11
STAT_INVALID_STATE_TRANS = 12
STAT_TRUNCATED_DROPS = 13
STAT_NON_IPV4_PASSED = 14
STAT_NON_IPV4_DROPPED = 15
STAT_FRAGMENTS = 16
STAT_FRAGMENT_DROPS = 17
STAT_LOG_EVENTS = 18
STAT_LOG_SUPPRESSED = 19
STAT_UNTRACKED_PASSES = 20
STAT_REEVALUATIONS = 21
STAT_SPOOF_DROPS = 22
STAT_INSERT_FAILURES = 23
STAT_DEGRADED_PASSTHROUGH = 24
STAT_DEGRADED_RULE_DROPS = 25
STAT_ENDPOINT_SYN_DROPS = 26
STAT_ENDPOINT_DEGRADED = 27
STAT_ICMP_RELATED = 28
STAT_REVERSE_NEW_FLOWS = 29
STAT_ARP_SPOOF_DROPS = 30
STAT_NOT_FOR_ENDPOINT = 31
STAT_VLAN_TAGGED = 32
STAT_DEGRADED_REPLIES = 33
STAT_MAX = 34

# The counters by name, as facts and metrics report them: "total_packets" for STAT_TOTAL_PACKETS.
STAT_NAMES = [name[len("STAT_"):].lower() for name, _index in sorted(
    ((key, value) for key, value in globals().items()
     if key.startswith("STAT_") and key != "STAT_MAX"), key=lambda item: item[1])]
STAT = dict((name, i) for i, name in enumerate(STAT_NAMES))

# Protocol numbers the program parses (linux/in.h, not microseg.h; the test checks them
# against the socket module's).
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
PROTOCOLS = {"icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
PROTOCOL_NAMES = dict((v, k) for k, v in PROTOCOLS.items())
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP)

# ---- the names user space speaks, each table numbered by the header's constants ----------
DIRECTIONS = {"egress": MS_DIR_EGRESS, "ingress": MS_DIR_INGRESS}
DIRECTION_NAMES = dict((v, k) for k, v in DIRECTIONS.items())
ACTIONS = {"allow": MS_ACTION_ALLOW, "deny": MS_ACTION_DENY, "log": MS_ACTION_LOG}
ACTION_NAMES = dict((v, k) for k, v in ACTIONS.items())
L3_MODES = {"allow": MS_L3_ALLOW, "drop": MS_L3_DROP}
L3_MODE_NAMES = dict((v, k) for k, v in L3_MODES.items())
PASSTHROUGH_MODES = {"default_only": MS_PASSTHROUGH_DEFAULT_ONLY,
                     "always": MS_PASSTHROUGH_ALWAYS, "never": MS_PASSTHROUGH_NEVER}
PASSTHROUGH_MODE_NAMES = dict((v, k) for k, v in PASSTHROUGH_MODES.items())
TCP_STATES = [
    "NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
    "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "CLOSING",
]
TCP_STATE = dict((name, i) for i, name in enumerate(TCP_STATES))
PRESSURE_LEVELS = ["normal", "warning", "critical"]
LOG_REASONS = {LOG_REASON_NEW_FLOW: "new_flow", LOG_REASON_REEVALUATE: "reevaluate"}

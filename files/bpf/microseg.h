/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: the ABI shared by the TC program and user space.
 *
 * Only what both sides read: map keys and values, and every enum, flag and constant user
 * space writes into or reads out of the maps. No BCC macros and no code (the program's
 * own helpers live in lib/), so any C compiler can read it.
 *
 * This header is the single source of truth for every map key and value. The Python
 * ctypes mirrors in plugins/module_utils/_maps.py are checked against it by
 * tests/functional/test_layout.py (sizes and offsets compiled from this very file).
 *
 * All structs are naturally aligned (no __packed): the program updates 64-bit counters
 * with atomic adds, which the verifier only accepts on aligned fields.
 */
#ifndef MICROSEG_H
#define MICROSEG_H

/* ---- enums shared with user space -------------------------------------------- */

/* Direction is always seen from the container. */
#define MS_DIR_EGRESS   0   /* the container sends: TC ingress of the host-side veth */
#define MS_DIR_INGRESS  1   /* the container receives: TC egress of the host-side veth */

#define MS_ACTION_ALLOW 0
#define MS_ACTION_DENY  1
#define MS_ACTION_LOG   2   /* allow, and emit a rate-limited event */

#define MS_L3_ALLOW     0
#define MS_L3_DROP      1

/* TCP states, the seed's enum (RFC 793 names), seen from the flow's initiator. */
#define TCP_NONE        0
#define TCP_SYN_SENT    1
#define TCP_SYN_RECV    2
#define TCP_ESTABLISHED 3
#define TCP_FIN_WAIT1   4
#define TCP_FIN_WAIT2   5
#define TCP_TIME_WAIT   6
#define TCP_CLOSE       7
#define TCP_CLOSE_WAIT  8
#define TCP_LAST_ACK    9
#define TCP_CLOSING     10
#define TCP_STATE_MAX   11

/* session_value.flags */
#define SESSION_FLAG_INGRESS        0x0001  /* created by a packet towards the container */
#define SESSION_FLAG_TLS_DETECTED   0x0002
#define SESSION_FLAG_HTTP_DETECTED  0x0004
#define SESSION_FLAG_DPI_REQUIRED   0x0008
/* 0x0010 and 0x0080 were set and never read (policy cached, responder FIN): free. */
#define SESSION_FLAG_SYN_COUNTED    0x0020  /* counted in map_pressure.syn_sent_count */
#define SESSION_FLAG_FIN_ORIG       0x0040  /* fin_seq_orig is valid */
#define SESSION_FLAG_PICKUP         0x0100  /* first packet seen was mid-stream TCP */
#define SESSION_FLAG_EP_SYN_COUNTED 0x0200  /* counted in its endpoint's half_open */

/* microseg_config.flags */
#define MS_CFG_ANTISPOOF            0x0001  /* endpoint_map entries are checked */
#define MS_CFG_LEARN_ENDPOINTS      0x0002  /* the monitor learns them (user space only) */

/* microseg_config.degraded_passthrough: which denied DNS/ICMP first packets pass while
 * new flows are degraded (critical pressure, or their endpoint over its session quota). */
#define MS_PASSTHROUGH_DEFAULT_ONLY 0   /* only those the default action denied */
#define MS_PASSTHROUGH_ALWAYS       1   /* the seed's rule: deny rules too */
#define MS_PASSTHROUGH_NEVER        2

/* ICMP error types that quote the packet they are about (RFC 792). */
#define ICMP_DEST_UNREACH_TYPE      3
#define ICMP_TIME_EXCEEDED_TYPE     11
#define ICMP_PARAMETERPROB_TYPE     12

/* range_value.flags */
#define RANGE_FLAG_FINAL            0x0001  /* policy_id/action decide; next_class unused */

/* LPM key prefix lengths (see the range maps below): class_id is always matched in full,
 * so a key's prefix counts the class bits first; a data plane lookup asks for every bit. */
#define MS_LPM_CLASS_BITS           32
#define MS_LPM_PROTOCOL_BITS        8
#define MS_LPM_IP_FULL              (MS_LPM_CLASS_BITS + 32)
#define MS_LPM_PORT_FULL            (MS_LPM_CLASS_BITS + MS_LPM_PROTOCOL_BITS + 16)
#define MS_LPM_SPORT_FULL           (MS_LPM_CLASS_BITS + 16)
/* The first range step's class: policy set and direction, as the rule compiler roots it. */
#define MS_LPM_ROOT_CLASS(set, dir) (((set) << 1) | (dir))
/* Later steps' classes are the compiler's (user space only): numbered from
 * MS_LPM_CLASS_BASE, with the policy set in bit MS_LPM_CLASS_SET_BIT. */
#define MS_LPM_CLASS_BASE           4
#define MS_LPM_CLASS_SET_BIT        31

/* Pressure levels, as the seed defines them. */
#define PRESSURE_NORMAL   0
#define PRESSURE_WARNING  1
#define PRESSURE_CRITICAL 2

/* log_event.reason */
#define LOG_REASON_NEW_FLOW   0
#define LOG_REASON_REEVALUATE 1

/* stats_map indexes: the seed's 13 counters first, in the seed's order, then ours. */
#define STAT_TOTAL_PACKETS         0
#define STAT_ALLOWED_PACKETS       1
#define STAT_DENIED_PACKETS        2
#define STAT_TOTAL_BYTES           3
#define STAT_ALLOWED_BYTES         4
#define STAT_DENIED_BYTES          5
#define STAT_NEW_SESSIONS          6
#define STAT_POLICY_LOOKUPS        7
#define STAT_SESSION_HITS          8
#define STAT_MAP_FULL_DROPS        9
#define STAT_LRU_EVICTIONS         10
#define STAT_TCP_SYN_FLOODS        11
#define STAT_INVALID_STATE_TRANS   12
#define STAT_TRUNCATED_DROPS       13
#define STAT_NON_IPV4_PASSED       14
#define STAT_NON_IPV4_DROPPED      15
#define STAT_FRAGMENTS             16
#define STAT_FRAGMENT_DROPS        17
#define STAT_LOG_EVENTS            18
#define STAT_LOG_SUPPRESSED        19
#define STAT_UNTRACKED_PASSES      20
#define STAT_REEVALUATIONS         21
#define STAT_SPOOF_DROPS           22
#define STAT_INSERT_FAILURES       23
#define STAT_DEGRADED_PASSTHROUGH  24  /* denied by the default, passed as DNS/ICMP */
#define STAT_DEGRADED_RULE_DROPS   25  /* DNS/ICMP a deny rule matched, held while degraded */
#define STAT_ENDPOINT_SYN_DROPS    26  /* SYNs over their endpoint's half-open quota */
#define STAT_ENDPOINT_DEGRADED     27  /* new flows of an endpoint over its session quota */
#define STAT_ICMP_RELATED          28  /* ICMP errors decided by the session they quote */
#define STAT_REVERSE_NEW_FLOWS     29  /* a session's responder opening a flow of its own */
#define STAT_ARP_SPOOF_DROPS       30  /* ARP a container sent for an address not its own */
#define STAT_NOT_FOR_ENDPOINT      31  /* frames towards a container not addressed to it */
#define STAT_VLAN_TAGGED           32  /* 802.1Q/802.1ad frames (in-band or offloaded tag) */
#define STAT_DEGRADED_REPLIES      33  /* untracked replies passed by the reflexive check */
#define STAT_MAX                   34

/* ---- map keys and values ----------------------------------------------------- */

/*
 * policy_map: exact 5-tuple + direction rules. Addresses in network byte order, ports in
 * host byte order (as in the seed). policy_set selects one of the two policy copies: a
 * converge writes the inactive copy and flips config.policy_epoch (see struct microseg_config).
 */
struct policy_key {
    __u32 src_ip;
    __u32 dst_ip;
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;
    __u8  direction;
    __u8  policy_set;
    __u8  pad;
};

struct policy_value {
    __u32 policy_id;
    __u8  action;
    __u8  flags;
    __u16 reserved;
    __u64 hit_count;
    __u64 last_hit;
};

/*
 * CIDR rules are decided by a chain of longest-prefix lookups that the rule compiler
 * precomputes, so the cost per packet is bounded whatever the rule count:
 *   1. ip_range_map    class = (policy_set << 1) | direction, address = remote peer
 *   2. local_range_map class = next_class of step 1,           address = container
 *   3. port_range_map  class = next_class of step 2, protocol, destination port
 *   4. sport_range_map class = next_class of step 3,           source port
 * A value with RANGE_FLAG_FINAL ends the chain; a miss anywhere means the default action.
 * class_id is matched in full (prefixlen >= 32) so its byte order only has to agree
 * between writer and reader; addresses and ports are big-endian so prefixes work.
 */
struct lpm_key {
    __u32 prefixlen;
    __u32 class_id;
    __u32 ip;
};

struct port_lpm_key {
    __u32 prefixlen;
    __u32 class_id;
    __u8  protocol;
    __u8  port[2];
    __u8  pad;
};

struct sport_lpm_key {
    __u32 prefixlen;
    __u32 class_id;
    __u8  port[2];
    __u8  pad[2];
};

struct range_value {
    __u32 policy_id;
    __u8  action;
    __u8  priority;
    __u16 flags;
    __u32 next_class;
};

/* Sessions are keyed container-first: both directions of a flow share one entry. */
struct session_key {
    __u32 src_ip;      /* the container's address */
    __u32 dst_ip;      /* the remote peer */
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;
    __u8  padding[3];
};

struct session_value {
    __u64 session_id;     /* creation time, bpf_ktime_get_ns() */
    __u64 packets;
    __u64 bytes;
    __u64 last_seen;
    __u32 policy_id;
    __u8  action;
    __u8  state;
    __u16 flags;
    __u32 seq_init;       /* initiator's ISN */
    __u32 reserved_a;     /* unused (was the responder's ISN, never read) */
    __u32 policy_ver;     /* config.policy_epoch the verdict was taken under */
    __u32 fin_seq_orig;   /* sequence just past the initiator's FIN */
    __u32 reserved_b;     /* unused (was the responder's FIN, never read) */
    __u16 parser;
    __u8  direction;      /* direction of the packet that created the session */
    __u8  reserved;
    __u32 ifindex;        /* the endpoint (host-side interface) whose hook created it */
    __u32 reserved2;
};

struct map_pressure {
    __u64 total_sessions;
    __u64 evictions;
    __u64 insertion_failures;
    __u64 last_check;
    __u32 pressure_level;
    __u32 syn_sent_count;
    __u64 decayed_at;     /* the data plane's last decay step (monitor silent) */
};

/*
 * One entry, written only by user space. policy_epoch is the policy generation; its low
 * bit is the active policy set. Bumping it is the single 4-byte store that switches a
 * whole new rule set in and makes every session decided under the old one re-evaluate.
 */
struct microseg_config {
    __u32 policy_epoch;
    __u8  default_action[2];      /* by direction */
    __u8  ipv6_mode;              /* MS_L3_ALLOW | MS_L3_DROP */
    __u8  other_l3_mode;          /* ethertypes that are not IPv4, IPv6 or ARP */
    __u32 syn_flood_threshold;    /* SYN_SENT sessions; 0 disables the guard */
    __u32 pressure_warn_sessions; /* 0 disables the pressure levels */
    __u32 pressure_crit_sessions;
    __u32 session_max;
    __u32 log_rate_per_sec;
    __u32 flags;                  /* MS_CFG_* */
    __u32 endpoint_half_open_quota; /* SYN_SENT sessions per endpoint; 0: no quota */
    __u32 endpoint_session_quota;   /* sessions per endpoint; 0: no quota */
    __u8  degraded_passthrough;     /* MS_PASSTHROUGH_* */
    __u8  pad[3];
};

/*
 * endpoint_usage_map, keyed by the host-side ifindex. The data plane counts up as it
 * creates sessions; the monitor's recount rewrites sessions and half_open (LRU evictions
 * and expiry are invisible to the data plane) and leaves the drop counters alone.
 */
struct endpoint_usage {
    __u64 sessions;
    __u64 half_open;          /* TCP sessions in SYN_SENT */
    __u64 syn_quota_drops;    /* SYNs dropped over endpoint_half_open_quota */
    __u64 degraded_flows;     /* new flows degraded over endpoint_session_quota */
};

struct rule_stats {
    __u64 hits;
    __u64 last_hit;
};

/* Non-first IPv4 fragments carry no ports: they inherit the first fragment's verdict. */
struct frag_key {
    __u32 src_ip;
    __u32 dst_ip;
    __u16 ip_id;
    __u8  protocol;
    __u8  direction;
};

struct frag_value {
    __u64 reserved;       /* unused (was the first fragment's time, never read) */
    __u8  action;
    __u8  pad[7];
};

struct log_rate {
    __u64 window_start;
    __u64 count;
};

/*
 * Anti-spoofing and the receive-side check: the address of the container behind a
 * host-side interface (keyed by ifindex). It may send IPv4 and ARP only from ip; it is
 * handed only IPv4 for ip, broadcast (limited, or of its subnet when prefixlen is known)
 * and multicast, and only ARP that asks for ip (or announces its sender's own address).
 */
#define ENDPOINT_FLAG_MAC       0x0001  /* mac is the container's: ARP must carry it */
#define ENDPOINT_FLAG_LEARNED   0x0002  /* written by the monitor, not the endpoints option */
struct endpoint_value {
    __u32 ip;
    __u32 flags;
    __u8  mac[6];
    __u8  prefixlen;      /* 0: unknown, no subnet broadcast */
    __u8  pad;
};

struct log_event {
    __u64 timestamp_ns;
    __u32 src_ip;
    __u32 dst_ip;
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;
    __u8  direction;
    __u8  action;
    __u8  reason;
    __u32 policy_id;
    __u32 ifindex;
    __u32 policy_ver;
    __u32 pad;
};

#endif /* MICROSEG_H */

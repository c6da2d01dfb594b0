/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg: TC micro-segmentation program, compiled by BCC.
 *
 * Two entry points share one body:
 *   microseg_from_container  TC ingress of the host-side veth  (direction egress)
 *   microseg_to_container    TC egress of the host-side veth   (direction ingress)
 *
 * Compile-time parameters (set by plugins/module_utils/_loader.py as -D flags):
 *   MS_PIN_DIR, MS_POLICY_MAP_SIZE, MS_RANGE_MAP_SIZE, MS_SESSION_MAP_SIZE,
 *   MS_FRAG_MAP_SIZE, MS_RULE_STATS_SIZE, MS_ENDPOINT_MAP_SIZE, MS_LOG_RING_PAGES
 * Runtime parameters live in config_map (struct microseg_config).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "microseg.h"

#ifndef MS_PIN_DIR
#define MS_PIN_DIR "/sys/fs/bpf/microseg"
#endif
#ifndef MS_POLICY_MAP_SIZE
#define MS_POLICY_MAP_SIZE 100000
#endif
#ifndef MS_RANGE_MAP_SIZE
#define MS_RANGE_MAP_SIZE 10000
#endif
#ifndef MS_SESSION_MAP_SIZE
#define MS_SESSION_MAP_SIZE 1000000
#endif
#ifndef MS_FRAG_MAP_SIZE
#define MS_FRAG_MAP_SIZE 8192
#endif
#ifndef MS_RULE_STATS_SIZE
#define MS_RULE_STATS_SIZE 65536
#endif
#ifndef MS_ENDPOINT_MAP_SIZE
#define MS_ENDPOINT_MAP_SIZE 4096
#endif
#ifndef MS_LOG_RING_PAGES
#define MS_LOG_RING_PAGES 16
#endif

#define MS_PIN(name) MS_PIN_DIR "/" name

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8

struct icmp_echo_hdr {
    __u8  type;
    __u8  code;
    __u16 checksum;
    __u16 id;
    __u16 sequence;
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

#define IP_MF      0x2000
#define IP_OFFMASK 0x1fff

#define MS_NSEC_PER_SEC 1000000000ULL

/* ---- maps: every one pinned, so sessions and policy outlive a program upgrade ---- */

BPF_TABLE_PINNED("hash", struct policy_key, struct policy_value, policy_map,
                 MS_POLICY_MAP_SIZE, MS_PIN("policy_map"));
BPF_TABLE_PINNED("lpm_trie", struct lpm_key, struct range_value, ip_range_map,
                 MS_RANGE_MAP_SIZE, MS_PIN("ip_range_map"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm_key, struct range_value, local_range_map,
                 MS_RANGE_MAP_SIZE, MS_PIN("local_range_map"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct port_lpm_key, struct range_value, port_range_map,
                 MS_RANGE_MAP_SIZE, MS_PIN("port_range_map"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct sport_lpm_key, struct range_value, sport_range_map,
                 MS_RANGE_MAP_SIZE, MS_PIN("sport_range_map"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct session_key, struct session_value, session_map,
                 MS_SESSION_MAP_SIZE, MS_PIN("session_map"), BPF_F_NO_COMMON_LRU);
BPF_TABLE_PINNED("percpu_array", __u32, __u64, stats_map, STAT_MAX, MS_PIN("stats_map"));
BPF_TABLE_PINNED("array", __u32, struct map_pressure, map_pressure_map, 1,
                 MS_PIN("map_pressure_map"));
BPF_TABLE_PINNED("array", __u32, struct microseg_config, config_map, 1, MS_PIN("config_map"));
BPF_TABLE_PINNED("hash", __u32, struct rule_stats, rule_stats_map, MS_RULE_STATS_SIZE,
                 MS_PIN("rule_stats_map"));
BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_value, frag_map, MS_FRAG_MAP_SIZE,
                 MS_PIN("frag_map"));
BPF_TABLE_PINNED("array", __u32, struct log_rate, log_rate_map, 1, MS_PIN("log_rate_map"));
BPF_TABLE_PINNED("hash", __u32, struct endpoint_value, endpoint_map, MS_ENDPOINT_MAP_SIZE,
                 MS_PIN("endpoint_map"));
BPF_TABLE_PINNED("hash", __u32, struct endpoint_usage, endpoint_usage_map, MS_ENDPOINT_MAP_SIZE,
                 MS_PIN("endpoint_usage_map"));

/* BCC's BPF_RINGBUF_OUTPUT cannot be pinned; this is the same table with a pin path. */
struct log_events_table_t {
    int key;
    __u32 leaf;
    int (*ringbuf_output)(void *, u64, u64);
    void *(*ringbuf_reserve)(u64);
    void (*ringbuf_discard)(void *, u64);
    void (*ringbuf_submit)(void *, u64);
    __u32 max_entries;
};
__attribute__((section("maps/ringbuf:" MS_PIN("log_events"))))
struct log_events_table_t log_events = { .max_entries = MS_LOG_RING_PAGES * 4096 };

/* ---- helpers -------------------------------------------------------------------- */

static __always_inline void stat_add(__u32 idx, __u64 val)
{
    __u64 *counter = stats_map.lookup(&idx);
    if (counter)
        *counter += val;   /* per-CPU slot: no atomic needed */
}

static __always_inline int verdict_pass(__u64 len)
{
    stat_add(STAT_ALLOWED_PACKETS, 1);
    stat_add(STAT_ALLOWED_BYTES, len);
    return TC_ACT_OK;
}

static __always_inline int verdict_drop(__u64 len)
{
    stat_add(STAT_DENIED_PACKETS, 1);
    stat_add(STAT_DENIED_BYTES, len);
    return TC_ACT_SHOT;
}

static __always_inline void port_bytes(__u8 *dst, __u16 port)
{
    dst[0] = port >> 8;
    dst[1] = port & 0xff;
}

struct flow {
    __u32 src_ip;        /* as the flow was initiated */
    __u32 dst_ip;
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;
    __u8  direction;
};

struct decision {
    __u32 policy_id;
    __u8  action;
    __u8  exact;
};

static __always_inline void count_rule_hit(__u32 policy_id, __u64 now)
{
    if (!policy_id)
        return;
    struct rule_stats *rs = rule_stats_map.lookup(&policy_id);
    if (rs) {
        __sync_fetch_and_add(&rs->hits, 1);
        rs->last_hit = now;
    } else {
        struct rule_stats fresh = { .hits = 1, .last_hit = now };
        rule_stats_map.insert(&policy_id, &fresh);
    }
}

/*
 * The verdict for the first packet of a flow: exact 5-tuple, else the compiled LPM chain,
 * else the default action of the direction. Bounded: one hash and at most four LPM lookups.
 */
static __always_inline void lookup_policy(struct microseg_config *cfg, struct flow *f,
                                          struct decision *d, __u64 now, int count)
{
    __u32 set = cfg->policy_epoch & 1;
    __u8 dir = f->direction & 1;

    if (count)
        stat_add(STAT_POLICY_LOOKUPS, 1);
    d->policy_id = 0;
    d->action = cfg->default_action[dir];
    d->exact = 0;

    struct policy_key pk = {
        .src_ip = f->src_ip,
        .dst_ip = f->dst_ip,
        .src_port = f->src_port,
        .dst_port = f->dst_port,
        .protocol = f->protocol,
        .direction = dir,
        .policy_set = set,
    };
    struct policy_value *pv = policy_map.lookup(&pk);
    if (pv) {
        d->policy_id = pv->policy_id;
        d->action = pv->action;
        d->exact = 1;
        if (count) {
            __sync_fetch_and_add(&pv->hit_count, 1);
            pv->last_hit = now;
            count_rule_hit(d->policy_id, now);
        }
        return;
    }

    __u32 remote = dir == MS_DIR_EGRESS ? f->dst_ip : f->src_ip;
    __u32 local = dir == MS_DIR_EGRESS ? f->src_ip : f->dst_ip;

    struct lpm_key rk = { .prefixlen = 64, .class_id = (set << 1) | dir, .ip = remote };
    struct range_value *rv = ip_range_map.lookup(&rk);
    if (!rv)
        return;
    if (!(rv->flags & RANGE_FLAG_FINAL)) {
        struct lpm_key lk = { .prefixlen = 64, .class_id = rv->next_class, .ip = local };
        rv = local_range_map.lookup(&lk);
        if (!rv)
            return;
    }
    if (!(rv->flags & RANGE_FLAG_FINAL)) {
        struct port_lpm_key ppk = { .prefixlen = 56, .class_id = rv->next_class,
                                    .protocol = f->protocol };
        port_bytes(ppk.port, f->dst_port);
        rv = port_range_map.lookup(&ppk);
        if (!rv)
            return;
    }
    if (!(rv->flags & RANGE_FLAG_FINAL)) {
        struct sport_lpm_key spk = { .prefixlen = 48, .class_id = rv->next_class };
        port_bytes(spk.port, f->src_port);
        rv = sport_range_map.lookup(&spk);
        if (!rv)
            return;
        if (!(rv->flags & RANGE_FLAG_FINAL))
            return;   /* a chain longer than four steps is a compiler bug: default */
    }
    d->policy_id = rv->policy_id;
    d->action = rv->action;
    if (count)
        count_rule_hit(d->policy_id, now);
}

/* A flow's verdict, counted (lookups, rule hits): what decides a packet. */
static __always_inline void decide(struct microseg_config *cfg, struct flow *f,
                                   struct decision *d, __u64 now)
{
    lookup_policy(cfg, f, d, now, 1);
}

/* The other side's view of a flow: would its reversed 5-tuple be allowed as a new flow?
 * Not counted: it decides nothing by itself. */
static __always_inline int reverse_allowed(struct microseg_config *cfg, struct flow *f,
                                           __u64 now)
{
    struct flow r = {
        .src_ip = f->dst_ip,
        .dst_ip = f->src_ip,
        .src_port = f->dst_port,
        .dst_port = f->src_port,
        .protocol = f->protocol,
        .direction = f->direction ^ 1,
    };
    struct decision d = {};
    lookup_policy(cfg, &r, &d, now, 0);
    return d.action != MS_ACTION_DENY;
}

static __always_inline void emit_log(struct flow *f, struct decision *d, __u32 ifindex,
                                     __u32 policy_ver, __u8 reason, __u32 rate, __u64 now)
{
    __u32 zero = 0;
    struct log_rate *lr = log_rate_map.lookup(&zero);
    if (!lr)
        return;
    if (now - lr->window_start >= MS_NSEC_PER_SEC) {
        /* Racy reset across CPUs is fine: the limit is approximate by design. */
        lr->window_start = now;
        lr->count = 0;
    }
    if (lr->count >= rate) {
        stat_add(STAT_LOG_SUPPRESSED, 1);
        return;
    }
    __sync_fetch_and_add(&lr->count, 1);

    struct log_event ev = {
        .timestamp_ns = now,
        .src_ip = f->src_ip,
        .dst_ip = f->dst_ip,
        .src_port = f->src_port,
        .dst_port = f->dst_port,
        .protocol = f->protocol,
        .direction = f->direction,
        .action = d->action,
        .reason = reason,
        .policy_id = d->policy_id,
        .ifindex = ifindex,
        .policy_ver = policy_ver,
    };
    if (log_events.ringbuf_output(&ev, sizeof(ev), 0) == 0)
        stat_add(STAT_LOG_EVENTS, 1);
    else
        stat_add(STAT_LOG_SUPPRESSED, 1);
}

static __always_inline int seq_after_eq(__u32 a, __u32 b)
{
    return (__s32)(a - b) >= 0;
}

/*
 * TCP tracking from the flow initiator's point of view ("orig" = the initiator's
 * direction). Unlike the seed's table this sees both directions, so:
 *   initiator closes first:  ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 / CLOSING -> TIME_WAIT
 *   responder closes first:  ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE
 * A FIN counts as acknowledged only when the peer's ACK covers the FIN's sequence.
 * Returns 0 for an accepted packet, -1 for an invalid transition, 1 for a new SYN
 * on a finished session (port reuse: the caller starts a fresh flow).
 */
static __always_inline int tcp_track(struct session_value *s, __u8 tf, int orig,
                                     __u32 seq, __u32 ack_seq, __u32 payload)
{
    int syn = tf & TCPF_SYN, ack = tf & TCPF_ACK, fin = tf & TCPF_FIN;

    if (tf & TCPF_RST) {
        s->state = TCP_CLOSE;
        return 0;
    }
    if (fin) {
        __u32 end = seq + payload + 1;
        if (orig) {
            s->fin_seq_orig = end;
            s->flags |= SESSION_FLAG_FIN_ORIG;
        } else {
            s->fin_seq_reply = end;
            s->flags |= SESSION_FLAG_FIN_REPLY;
        }
    }
    int acks_orig_fin = !orig && ack && (s->flags & SESSION_FLAG_FIN_ORIG) &&
                        seq_after_eq(ack_seq, s->fin_seq_orig);

    switch (s->state) {
    case TCP_SYN_SENT:
        if (syn && !ack && orig)
            return 0;                       /* retransmitted SYN */
        if (syn && ack && !orig) {
            s->state = TCP_SYN_RECV;
            s->ack_init = seq;
            return 0;
        }
        return -1;
    case TCP_SYN_RECV:
        if (syn)
            return (ack && !orig) || (!ack && orig) ? 0 : -1;
        if (ack && orig) {
            s->state = TCP_ESTABLISHED;
            if (fin)
                s->state = TCP_FIN_WAIT1;
            return 0;
        }
        return -1;
    case TCP_NONE:
    case TCP_ESTABLISHED:
        if (syn)
            return -1;
        if (fin)
            s->state = orig ? TCP_FIN_WAIT1 : TCP_CLOSE_WAIT;
        else if (s->state == TCP_NONE)
            s->state = TCP_ESTABLISHED;
        return 0;
    case TCP_FIN_WAIT1:
        if (syn)
            return -1;
        if (!orig) {
            if (fin)
                s->state = acks_orig_fin ? TCP_TIME_WAIT : TCP_CLOSING;
            else if (acks_orig_fin)
                s->state = TCP_FIN_WAIT2;
        }
        return 0;
    case TCP_FIN_WAIT2:
        if (syn)
            return -1;
        if (!orig && fin)
            s->state = TCP_TIME_WAIT;
        return 0;
    case TCP_CLOSING:
        if (syn)
            return -1;
        if (acks_orig_fin)
            s->state = TCP_TIME_WAIT;
        return 0;
    case TCP_CLOSE_WAIT:
        if (syn)
            return -1;
        if (orig && fin)
            s->state = TCP_LAST_ACK;
        return 0;
    case TCP_LAST_ACK:
        if (syn)
            return -1;
        if (acks_orig_fin)
            s->state = TCP_CLOSE;
        return 0;
    case TCP_TIME_WAIT:
    case TCP_CLOSE:
        if (syn && !ack && orig)
            return 1;
        return syn ? -1 : 0;
    default:
        return -1;
    }
}

static __always_inline struct map_pressure *pressure_get(void)
{
    __u32 zero = 0;
    return map_pressure_map.lookup(&zero);
}

/* The endpoint's usage entry, created on its first new flow; NULL only if the map is full
 * (then the endpoint goes without quotas, and the host-wide guards still hold). */
static __always_inline struct endpoint_usage *endpoint_usage_get(__u32 ifindex)
{
    struct endpoint_usage *u = endpoint_usage_map.lookup(&ifindex);
    if (u)
        return u;
    struct endpoint_usage fresh = {};
    endpoint_usage_map.insert(&ifindex, &fresh);
    return endpoint_usage_map.lookup(&ifindex);
}

static __always_inline void half_open_inc(struct map_pressure *mp, struct endpoint_usage *u,
                                          struct session_value *s)
{
    s->flags |= SESSION_FLAG_SYN_COUNTED;
    if (mp)
        __sync_fetch_and_add(&mp->syn_sent_count, 1);
    if (u) {
        s->flags |= SESSION_FLAG_EP_SYN_COUNTED;
        __sync_fetch_and_add(&u->half_open, 1);
    }
}

/* The monitor rewrites both counts from a full scan, so either can be below ours. */
static __always_inline void half_open_release(struct map_pressure *mp, struct session_value *s)
{
    if (s->flags & SESSION_FLAG_SYN_COUNTED) {
        s->flags &= ~SESSION_FLAG_SYN_COUNTED;
        if (mp && mp->syn_sent_count > 0)
            __sync_fetch_and_add(&mp->syn_sent_count, -1);
    }
    if (s->flags & SESSION_FLAG_EP_SYN_COUNTED) {
        s->flags &= ~SESSION_FLAG_EP_SYN_COUNTED;
        __u32 ifindex = s->ifindex;
        struct endpoint_usage *u = endpoint_usage_map.lookup(&ifindex);
        if (u && u->half_open > 0)
            __sync_fetch_and_add(&u->half_open, -1);
    }
}

static __always_inline void half_open_settle(struct map_pressure *mp, struct session_value *s)
{
    if (s->state != TCP_SYN_SENT)
        half_open_release(mp, s);
}

/* A session the data plane deletes itself: give back what it was counted in. */
static __always_inline void session_forget(struct map_pressure *mp, struct session_key *sk,
                                           struct session_value *s)
{
    half_open_release(mp, s);
    __u32 ifindex = s->ifindex;
    if (session_map.delete(sk) != 0)
        return;
    if (mp && mp->total_sessions > 0)
        __sync_fetch_and_add(&mp->total_sessions, -1);
    struct endpoint_usage *u = endpoint_usage_map.lookup(&ifindex);
    if (u && u->sessions > 0)
        __sync_fetch_and_add(&u->sessions, -1);
}

/*
 * Without the monitor the data plane cannot see sessions end (expiry, LRU eviction), so
 * its count only grows and one burst would pin the host at critical. While the monitor's
 * last recount is older than MS_MONITOR_SILENT_NS, the count decays by a quarter per
 * second: the level then follows the recent insert rate; the monitor's next recount
 * writes the true number back.
 */
#define MS_MONITOR_SILENT_NS (5 * MS_NSEC_PER_SEC)

static __always_inline void pressure_decay(struct map_pressure *mp, __u64 now)
{
    if (!mp->total_sessions || now - mp->last_check < MS_MONITOR_SILENT_NS ||
        now - mp->decayed_at < MS_NSEC_PER_SEC)
        return;
    /* Racy across CPUs by design: a lost or doubled step only shifts the estimate. */
    mp->decayed_at = now;
    __u64 total = mp->total_sessions;
    mp->total_sessions = total - (total >> 2) - (total < 4 ? total : 0);
}

static __always_inline __u32 pressure_level(struct microseg_config *cfg,
                                            struct map_pressure *mp, __u64 now)
{
    if (!mp || !cfg->pressure_warn_sessions)
        return PRESSURE_NORMAL;
    pressure_decay(mp, now);
    __u32 level = PRESSURE_NORMAL;
    if (mp->total_sessions >= cfg->pressure_crit_sessions)
        level = PRESSURE_CRITICAL;
    else if (mp->total_sessions >= cfg->pressure_warn_sessions)
        level = PRESSURE_WARNING;
    if (mp->pressure_level != level)
        mp->pressure_level = level;   /* write only on change: the line is shared */
    return level;
}

static __always_inline void init_session(struct session_value *s, struct decision *d,
                                         __u32 epoch, __u8 dir, __u64 len, __u64 now,
                                         __u32 ifindex)
{
    s->session_id = now;
    s->packets = 1;
    s->bytes = len;
    s->last_seen = now;
    s->policy_id = d->policy_id;
    s->action = d->action;
    s->state = TCP_NONE;
    s->flags = SESSION_FLAG_POLICY_CACHED | (dir == MS_DIR_INGRESS ? SESSION_FLAG_INGRESS : 0);
    s->seq_init = 0;
    s->ack_init = 0;
    s->policy_ver = epoch;
    s->fin_seq_orig = 0;
    s->fin_seq_reply = 0;
    s->parser = 0;
    s->direction = dir;
    s->reserved = 0;
    s->ifindex = ifindex;
    s->reserved2 = 0;
}

/* TCP state of a session this packet starts: SYN_SENT for a SYN, else a mid-stream pickup. */
static __always_inline void tcp_first_state(struct session_value *s, int is_syn, __u32 seq)
{
    if (is_syn) {
        s->state = TCP_SYN_SENT;
        s->seq_init = seq;
    } else {
        s->state = TCP_ESTABLISHED;   /* allowed flows only: denied ones get no session */
        s->flags |= SESSION_FLAG_PICKUP;
    }
}

/* Session slot s becomes the new flow this packet starts (port reuse after a close, or the
 * other side's own flow replacing a cut one); it stays its endpoint's. */
static __always_inline void session_restart(struct session_value *s, struct decision *d,
                                            __u32 epoch, __u8 dir, __u64 len, __u64 now,
                                            struct map_pressure *mp, __u8 protocol,
                                            int is_syn, __u32 seq)
{
    half_open_release(mp, s);
    init_session(s, d, epoch, dir, len, now, s->ifindex);
    if (protocol != IPPROTO_TCP)
        return;
    tcp_first_state(s, is_syn, seq);
    if (is_syn) {
        __u32 ifindex = s->ifindex;
        half_open_inc(mp, endpoint_usage_map.lookup(&ifindex), s);
    }
}

/* The flow a session stands for, as its initiator sent it (policy sees no ICMP ids). */
static __always_inline void session_flow(struct session_key *sk, struct session_value *s,
                                         struct flow *f)
{
    f->protocol = sk->protocol;
    f->direction = s->direction;
    if (s->direction == MS_DIR_EGRESS) {
        f->src_ip = sk->src_ip;
        f->dst_ip = sk->dst_ip;
        f->src_port = sk->src_port;
        f->dst_port = sk->dst_port;
    } else {
        f->src_ip = sk->dst_ip;
        f->dst_ip = sk->src_ip;
        f->src_port = sk->dst_port;
        f->dst_port = sk->src_port;
    }
    if (f->protocol != IPPROTO_TCP && f->protocol != IPPROTO_UDP) {
        f->src_port = 0;
        f->dst_port = 0;
    }
}

/* Policy changed since this flow was decided: decide it again, as initiated. */
static __always_inline void reevaluate(struct microseg_config *cfg, struct session_key *sk,
                                       struct session_value *s, __u32 ifindex, __u64 now)
{
    struct flow orig = {};
    struct decision d = {};
    session_flow(sk, s, &orig);
    stat_add(STAT_REEVALUATIONS, 1);
    decide(cfg, &orig, &d, now);
    if (d.action == MS_ACTION_LOG && s->action != MS_ACTION_LOG)
        emit_log(&orig, &d, ifindex, cfg->policy_epoch, LOG_REASON_REEVALUATE,
                 cfg->log_rate_per_sec, now);
    s->policy_id = d.policy_id;
    s->action = d.action;
    s->policy_ver = cfg->policy_epoch;
}

/*
 * Does this packet, sent by the responder side of session s, open a flow of its own?
 * Then it is decided as its sender's new flow, and a denied attempt leaves s untouched:
 * no packet of one side can change the verdict of the other side's flow.
 *   TCP: a bare SYN (outside simultaneous open, where the initiator waits in SYN_SENT).
 *   ICMP: an echo request.
 *   UDP and the rest: any packet, when s is denied (a flow a policy change cut): with no
 *   handshake there is no telling a reply from a new flow, and a cut flow must not keep
 *   the other side out of the same ports.
 */
static __always_inline int opens_own_flow(struct session_value *s, __u8 protocol,
                                          __u8 tcp_flags, __u8 icmp_type)
{
    if (protocol == IPPROTO_TCP)
        return (tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN && s->state != TCP_SYN_SENT;
    if (protocol == IPPROTO_ICMP)
        return icmp_type == ICMP_ECHO;
    return s->action == MS_ACTION_DENY;
}

/* Can this packet be a reply? A TCP segment carrying an ACK (a SYN-ACK included, a bare
 * SYN not), any UDP datagram, an ICMP echo reply. */
static __always_inline int reply_shaped(__u8 protocol, __u8 tcp_flags, __u8 icmp_type)
{
    if (protocol == IPPROTO_TCP)
        return (tcp_flags & TCPF_ACK) != 0;
    if (protocol == IPPROTO_UDP)
        return 1;
    if (protocol == IPPROTO_ICMP)
        return icmp_type == ICMP_ECHOREPLY;
    return 0;
}

/*
 * The seed's degradation (new flows untracked: allowed ones pass, DNS and ICMP pass, the
 * rest drops) narrowed so that an explicit deny rule always holds: by default only a
 * packet the *default action* denied gets the DNS/ICMP passthrough.
 */
static __always_inline int degraded_passthrough(struct microseg_config *cfg, struct flow *f,
                                                struct decision *d)
{
    if (f->protocol != IPPROTO_ICMP && f->dst_port != 53)
        return 0;
    if (cfg->degraded_passthrough == MS_PASSTHROUGH_ALWAYS)
        return 1;
    if (cfg->degraded_passthrough == MS_PASSTHROUGH_NEVER)
        return 0;
    if (d->policy_id == 0)
        return 1;
    stat_add(STAT_DEGRADED_RULE_DROPS, 1);
    return 0;
}

#ifdef MS_CACHE_DENIED_FLOWS
/* Bench only: the alternative DESIGN.md section 2 names (deny entries keyed so that only
 * their initiator's side hits them), measured against no session for a denied packet. */
#define MS_DENY_ENTRIES 1
#else
#define MS_DENY_ENTRIES 0
#endif

/*
 * An ICMP error quoting a packet of a tracked session: the session key of the quoted
 * packet, or -1. The quoted packet must be one the error's receiver sent (its source is
 * the error's destination), whole within the datagram, and not a later fragment.
 */
static __always_inline int icmp_error_key(void *l4, void *data_end, __u32 room,
                                          struct iphdr *outer, __u8 dir,
                                          struct session_key *sk)
{
    struct iphdr *in = l4 + sizeof(struct icmp_echo_hdr);
    if ((void *)(in + 1) > data_end || room < sizeof(struct icmp_echo_hdr) + sizeof(*in))
        return -1;
    __u32 in_ihl = (in->ihl & 0xf) * 4;
    if (in_ihl < sizeof(*in) || room < sizeof(struct icmp_echo_hdr) + in_ihl + 8)
        return -1;
    if (bpf_ntohs(in->frag_off) & IP_OFFMASK)
        return -1;
    __u8 *in_l4 = (void *)in + in_ihl;
    if ((void *)(in_l4 + 8) > data_end)
        return -1;
    __u16 sport = 0, dport = 0;
    if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP) {
        sport = ((__u16)in_l4[0] << 8) | in_l4[1];
        dport = ((__u16)in_l4[2] << 8) | in_l4[3];
    } else if (in->protocol == IPPROTO_ICMP) {
        if (in_l4[0] != ICMP_ECHO && in_l4[0] != ICMP_ECHOREPLY)
            return -1;     /* an error about an error: never related */
        sport = dport = ((__u16)in_l4[4] << 8) | in_l4[5];
    }
    sk->protocol = in->protocol;
    if (dir == MS_DIR_INGRESS) {
        /* The container receives the error about a packet it sent. */
        if (in->saddr != outer->daddr)
            return -1;
        sk->src_ip = in->saddr;
        sk->dst_ip = in->daddr;
        sk->src_port = sport;
        sk->dst_port = dport;
    } else {
        /* The container reports an error about a packet it received. */
        if (in->daddr != outer->saddr)
            return -1;
        sk->src_ip = in->daddr;
        sk->dst_ip = in->saddr;
        sk->src_port = dport;
        sk->dst_port = sport;
    }
    return 0;
}

/* IPv4 over Ethernet ARP, as RFC 826 lays it out. */
struct arp_ipv4 {
    __u16 hrd;
    __u16 pro;
    __u8  hln;
    __u8  pln;
    __u16 op;
    __u8  sha[6];
    __u8  spa[4];
    __u8  tha[6];
    __u8  tpa[4];
} __attribute__((packed));

static __always_inline __u32 arp_addr(__u8 *a)
{
    __u32 v;
    __builtin_memcpy(&v, a, 4);   /* unaligned in the frame: copy, stays network order */
    return v;
}

/* Is an ARP packet through this endpoint's port its own? Sent: its sender address is the
 * endpoint's (0.0.0.0 for an RFC 5227 probe) and, when known, its hardware address too.
 * Received: it asks for the endpoint's address, or announces its sender's own (gratuitous;
 * the sender's hook vouches for that). Anything else, malformed ARP included, is not. */
static __always_inline int arp_belongs(struct endpoint_value *ep, void *arp_start,
                                       void *data_end, __u8 dir)
{
    struct arp_ipv4 *arp = arp_start;
    if ((void *)(arp + 1) > data_end || arp->hrd != bpf_htons(1) ||
        arp->pro != bpf_htons(ETH_P_IP) || arp->hln != 6 || arp->pln != 4)
        return 0;
    __u32 spa = arp_addr(arp->spa), tpa = arp_addr(arp->tpa);
    if (dir == MS_DIR_EGRESS) {
        if (spa != ep->ip && spa != 0)
            return 0;
        if (ep->flags & ENDPOINT_FLAG_MAC) {
            for (int i = 0; i < 6; i++)
                if (arp->sha[i] != ep->mac[i])
                    return 0;
        }
        return 1;
    }
    return tpa == ep->ip || spa == tpa;
}

/* Addresses a container receives: its own, broadcast, multicast. */
static __always_inline int addressed_to(struct endpoint_value *ep, __u32 daddr)
{
    if (daddr == ep->ip || daddr == 0xffffffff)
        return 1;
    if ((bpf_ntohl(daddr) >> 28) == 0xe)       /* 224.0.0.0/4 */
        return 1;
    __u8 plen = ep->prefixlen;
    if (plen && plen < 31) {
        __u32 host_mask = 0xffffffffU >> plen;
        __u32 own = bpf_ntohl(ep->ip);
        if (bpf_ntohl(daddr) == (own | host_mask))
            return 1;
    }
    return 0;
}

/* ---- the packet path ------------------------------------------------------------ */

static __always_inline int microseg_handle(struct __sk_buff *skb, __u8 dir)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    __u64 len = skb->len;
    __u64 now = bpf_ktime_get_ns();
    __u32 zero = 0;
    __u32 ifindex = skb->ifindex;

    stat_add(STAT_TOTAL_PACKETS, 1);
    stat_add(STAT_TOTAL_BYTES, len);

    struct microseg_config *cfg = config_map.lookup(&zero);
    if (!cfg)
        return verdict_drop(len);   /* cannot happen for an array; fail closed */

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end) {
        stat_add(STAT_TRUNCATED_DROPS, 1);
        return verdict_drop(len);
    }
    __u16 eth_proto = eth->h_proto;
    /* A VLAN tag, in the frame or offloaded to skb metadata (veth does that): the frame is
     * not the container's plain traffic, and its inner packet is not policed as if it
     * were. Tagged frames follow the other-L3 mode, whichever way the tag travels. */
    if (skb->vlan_present || eth_proto == bpf_htons(ETH_P_8021Q) ||
        eth_proto == bpf_htons(ETH_P_8021AD)) {
        stat_add(STAT_VLAN_TAGGED, 1);
        if (cfg->other_l3_mode == MS_L3_ALLOW) {
            stat_add(STAT_NON_IPV4_PASSED, 1);
            return verdict_pass(len);
        }
        stat_add(STAT_NON_IPV4_DROPPED, 1);
        return verdict_drop(len);
    }
    struct endpoint_value *ep = NULL;
    if (cfg->flags & MS_CFG_ANTISPOOF)
        ep = endpoint_map.lookup(&ifindex);
    if (eth_proto == bpf_htons(ETH_P_ARP)) {
        if (ep && !arp_belongs(ep, (void *)(eth + 1), data_end, dir)) {
            stat_add(dir == MS_DIR_EGRESS ? STAT_ARP_SPOOF_DROPS : STAT_NOT_FOR_ENDPOINT, 1);
            return verdict_drop(len);
        }
        stat_add(STAT_NON_IPV4_PASSED, 1);
        return verdict_pass(len);
    }
    if (eth_proto != bpf_htons(ETH_P_IP)) {
        __u8 mode = eth_proto == bpf_htons(ETH_P_IPV6) ? cfg->ipv6_mode : cfg->other_l3_mode;
        if (mode == MS_L3_ALLOW) {
            stat_add(STAT_NON_IPV4_PASSED, 1);
            return verdict_pass(len);
        }
        stat_add(STAT_NON_IPV4_DROPPED, 1);
        return verdict_drop(len);
    }

    struct iphdr *iph = (void *)(eth + 1);
    if ((void *)(iph + 1) > data_end) {
        stat_add(STAT_TRUNCATED_DROPS, 1);
        return verdict_drop(len);
    }
    __u32 ihl_bytes = (iph->ihl & 0xf) * 4;
    /* tot_len, not data_end, bounds the datagram: Ethernet pads short frames. */
    __u32 tot_len = bpf_ntohs(iph->tot_len);
    if (ihl_bytes < sizeof(*iph) || (void *)iph + ihl_bytes > data_end || tot_len < ihl_bytes) {
        stat_add(STAT_TRUNCATED_DROPS, 1);
        return verdict_drop(len);
    }

    if (ep && dir == MS_DIR_EGRESS && ep->ip != iph->saddr) {
        stat_add(STAT_SPOOF_DROPS, 1);
        return verdict_drop(len);
    }
    if (ep && dir == MS_DIR_INGRESS && !addressed_to(ep, iph->daddr)) {
        /* A bridge floods unknown unicast to every port: such a frame is not this
         * container's, and deciding it here would create a session for someone else. */
        stat_add(STAT_NOT_FOR_ENDPOINT, 1);
        return verdict_drop(len);
    }

    __u16 frag_off = bpf_ntohs(iph->frag_off);
    struct frag_key fk = {
        .src_ip = iph->saddr,
        .dst_ip = iph->daddr,
        .ip_id = iph->id,
        .protocol = iph->protocol,
        .direction = dir,
    };
    if (frag_off & IP_OFFMASK) {
        /* A later fragment has no ports: it gets its first fragment's verdict or none. */
        stat_add(STAT_FRAGMENTS, 1);
        struct frag_value *fv = frag_map.lookup(&fk);
        if (fv && fv->action != MS_ACTION_DENY)
            return verdict_pass(len);
        stat_add(STAT_FRAGMENT_DROPS, 1);
        return verdict_drop(len);
    }
    int first_fragment = (frag_off & IP_MF) != 0;
    if (first_fragment)
        stat_add(STAT_FRAGMENTS, 1);

    struct flow f = {
        .src_ip = iph->saddr,
        .dst_ip = iph->daddr,
        .protocol = iph->protocol,
        .direction = dir,
    };
    __u8 tcp_flags = 0, icmp_type = 0xff;
    __u32 seq = 0, ack_seq = 0, payload = 0;
    __u16 session_port = 0;
    int icmp_error = 0;
    struct session_key related = {};
    void *l4 = (void *)iph + ihl_bytes;
    if (iph->protocol == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end || ihl_bytes + sizeof(*tcp) > tot_len) {
            stat_add(STAT_TRUNCATED_DROPS, 1);
            return verdict_drop(len);
        }
        f.src_port = bpf_ntohs(tcp->source);
        f.dst_port = bpf_ntohs(tcp->dest);
        tcp_flags = ((__u8 *)tcp)[13];
        seq = bpf_ntohl(tcp->seq);
        ack_seq = bpf_ntohl(tcp->ack_seq);
        __u32 hdrs = ihl_bytes + tcp->doff * 4;
        payload = tot_len > hdrs ? tot_len - hdrs : 0;
    } else if (iph->protocol == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end || ihl_bytes + sizeof(*udp) > tot_len) {
            stat_add(STAT_TRUNCATED_DROPS, 1);
            return verdict_drop(len);
        }
        f.src_port = bpf_ntohs(udp->source);
        f.dst_port = bpf_ntohs(udp->dest);
    } else if (iph->protocol == IPPROTO_ICMP) {
        struct icmp_echo_hdr *icmp = l4;
        if ((void *)(icmp + 1) > data_end || ihl_bytes + sizeof(*icmp) > tot_len) {
            stat_add(STAT_TRUNCATED_DROPS, 1);
            return verdict_drop(len);
        }
        icmp_type = icmp->type;
        /* Echo request and reply share the identifier: it tells pings apart, so a ping
         * one way does not open the other way. Policy still sees ICMP without ports. */
        if (icmp_type == ICMP_ECHO || icmp_type == ICMP_ECHOREPLY)
            session_port = bpf_ntohs(icmp->id);
        else if (icmp_type == ICMP_DEST_UNREACH_TYPE || icmp_type == ICMP_TIME_EXCEEDED_TYPE ||
                 icmp_type == ICMP_PARAMETERPROB_TYPE)
            icmp_error = 1;
    }

    struct map_pressure *mp = pressure_get();
    struct decision d = {};
    __u8 action;

    if (icmp_error) {
        /* Related to the session of the packet it quotes: that session's verdict (PMTU
         * discovery under default deny). It neither creates nor refreshes a session. */
        if (icmp_error_key(l4, data_end, tot_len - ihl_bytes, iph, dir, &related) == 0) {
            struct session_value *rs = session_map.lookup(&related);
            if (rs) {
                stat_add(STAT_ICMP_RELATED, 1);
                if (rs->policy_ver != cfg->policy_epoch)
                    reevaluate(cfg, &related, rs, ifindex, now);
                if (rs->action == MS_ACTION_DENY)
                    return verdict_drop(len);
                return verdict_pass(len);
            }
        }
        /* Quoting no session: decided by policy as ICMP, below, and left untracked. */
    }

    /* Sessions are keyed container-first, so both directions find the same entry. */
    struct session_key sk = { .protocol = f.protocol };
    if (f.protocol == IPPROTO_ICMP) {
        sk.src_ip = dir == MS_DIR_EGRESS ? f.src_ip : f.dst_ip;
        sk.dst_ip = dir == MS_DIR_EGRESS ? f.dst_ip : f.src_ip;
        sk.src_port = session_port;
        sk.dst_port = session_port;
    } else if (dir == MS_DIR_EGRESS) {
        sk.src_ip = f.src_ip;
        sk.dst_ip = f.dst_ip;
        sk.src_port = f.src_port;
        sk.dst_port = f.dst_port;
    } else {
        sk.src_ip = f.dst_ip;
        sk.dst_ip = f.src_ip;
        sk.src_port = f.dst_port;
        sk.dst_port = f.src_port;
    }

    int is_syn = f.protocol == IPPROTO_TCP && (tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
    struct session_value *s = icmp_error ? NULL : session_map.lookup(&sk);
    if (s && s->policy_ver != cfg->policy_epoch)
        reevaluate(cfg, &sk, s, ifindex, now);
    if (s && s->direction != dir && (MS_DENY_ENTRIES ? s->action == MS_ACTION_DENY :
                                     opens_own_flow(s, f.protocol, tcp_flags, icmp_type))) {
        /* The responder side opens a flow of its own: decided as its sender's. */
        stat_add(STAT_REVERSE_NEW_FLOWS, 1);
        decide(cfg, &f, &d, now);
        action = d.action;
        if (action != MS_ACTION_DENY &&
            (s->action == MS_ACTION_DENY || s->state == TCP_TIME_WAIT || s->state == TCP_CLOSE)) {
            /* What it replaces is over (cut, or closed): the slot becomes the new flow's. */
            session_restart(s, &d, cfg->policy_epoch, dir, len, now, mp, f.protocol, is_syn,
                            seq);
        }
        if (d.action == MS_ACTION_LOG)
            emit_log(&f, &d, ifindex, cfg->policy_epoch, LOG_REASON_NEW_FLOW,
                     cfg->log_rate_per_sec, now);
    } else if (s) {
        stat_add(STAT_SESSION_HITS, 1);
        __sync_fetch_and_add(&s->packets, 1);
        __sync_fetch_and_add(&s->bytes, len);
        s->last_seen = now;

        int restart = 0;
        if (f.protocol == IPPROTO_TCP) {
            int r = tcp_track(s, tcp_flags, s->direction == dir, seq, ack_seq, payload);
            if (r < 0)
                stat_add(STAT_INVALID_STATE_TRANS, 1);
            else if (r > 0)
                restart = 1;
            half_open_settle(mp, s);
        }
        action = s->action;
        if (restart) {
            /* Port reuse after a close: a new flow, decided afresh. */
            decide(cfg, &f, &d, now);
            action = d.action;
            if (action == MS_ACTION_DENY && !MS_DENY_ENTRIES) {
                session_forget(mp, &sk, s);   /* a denied first packet leaves nothing */
            } else {
                session_restart(s, &d, cfg->policy_epoch, dir, len, now, mp, f.protocol, 1,
                                seq);
            }
            if (d.action == MS_ACTION_LOG)
                emit_log(&f, &d, ifindex, cfg->policy_epoch, LOG_REASON_NEW_FLOW,
                         cfg->log_rate_per_sec, now);
        }
    } else {
        stat_add(STAT_NEW_SESSIONS, 1);
        struct endpoint_usage *u = endpoint_usage_get(ifindex);

        if (is_syn && cfg->syn_flood_threshold && mp &&
            mp->syn_sent_count >= cfg->syn_flood_threshold) {
            stat_add(STAT_TCP_SYN_FLOODS, 1);
            return verdict_drop(len);
        }
        if (is_syn && u && cfg->endpoint_half_open_quota &&
            u->half_open >= cfg->endpoint_half_open_quota) {
            /* This endpoint's own flood: its new SYNs drop, the others' do not. */
            stat_add(STAT_ENDPOINT_SYN_DROPS, 1);
            __sync_fetch_and_add(&u->syn_quota_drops, 1);
            return verdict_drop(len);
        }
        int degraded = pressure_level(cfg, mp, now) == PRESSURE_CRITICAL;
        if (u && cfg->endpoint_session_quota && u->sessions >= cfg->endpoint_session_quota) {
            stat_add(STAT_ENDPOINT_DEGRADED, 1);
            __sync_fetch_and_add(&u->degraded_flows, 1);
            degraded = 1;
        }

        decide(cfg, &f, &d, now);
        action = d.action;

        int tracked = 0;
        if (icmp_error) {
            /* An error message quoting no session: policy decides it, nothing is kept. */
        } else if (action == MS_ACTION_DENY && !MS_DENY_ENTRIES) {
            /* No session for a denied first packet: it leaves nothing that a packet of
             * another initiator could hit (conntrack never confirms a dropped packet). */
        } else if (!degraded) {
            struct session_value ns = {};
            init_session(&ns, &d, cfg->policy_epoch, dir, len, now, ifindex);
            if (f.protocol == IPPROTO_TCP)
                tcp_first_state(&ns, is_syn, seq);
            /* An LRU map evicts rather than failing once full; count what it must evict. */
            int evicting = mp && cfg->session_max && mp->total_sessions >= cfg->session_max;
            if (is_syn)
                half_open_inc(mp, u, &ns);
            if (session_map.insert(&sk, &ns) == 0) {
                tracked = 1;
                if (u)
                    __sync_fetch_and_add(&u->sessions, 1);
                if (mp) {
                    if (evicting) {
                        __sync_fetch_and_add(&mp->evictions, 1);
                        stat_add(STAT_LRU_EVICTIONS, 1);
                    } else {
                        __sync_fetch_and_add(&mp->total_sessions, 1);
                    }
                }
            } else {
                half_open_release(mp, &ns);
                if (mp)
                    __sync_fetch_and_add(&mp->insertion_failures, 1);
                stat_add(STAT_INSERT_FAILURES, 1);
            }
        }
        if (!tracked && !icmp_error) {
            if (action != MS_ACTION_DENY) {
                stat_add(STAT_UNTRACKED_PASSES, 1);
            } else if (degraded && degraded_passthrough(cfg, &f, &d)) {
                stat_add(STAT_UNTRACKED_PASSES, 1);
                stat_add(STAT_DEGRADED_PASSTHROUGH, 1);
                action = MS_ACTION_ALLOW;
            } else if (degraded && reply_shaped(f.protocol, tcp_flags, icmp_type) &&
                       reverse_allowed(cfg, &f, now)) {
                /* Untracked, an allowed flow's replies meet no session: a reply whose
                 * reversed 5-tuple the policy allows as a new flow passes (a reflexive,
                 * stateless check, for as long as new flows cannot be tracked). */
                stat_add(STAT_UNTRACKED_PASSES, 1);
                stat_add(STAT_DEGRADED_REPLIES, 1);
                action = MS_ACTION_ALLOW;
            } else if (degraded) {
                stat_add(STAT_MAP_FULL_DROPS, 1);
            }
        }
        if (d.action == MS_ACTION_LOG)
            emit_log(&f, &d, ifindex, cfg->policy_epoch, LOG_REASON_NEW_FLOW,
                     cfg->log_rate_per_sec, now);
    }

    if (first_fragment) {
        struct frag_value fv = { .first_seen = now, .action = action };
        frag_map.update(&fk, &fv);
    }
    if (action == MS_ACTION_DENY)
        return verdict_drop(len);
    return verdict_pass(len);
}

int microseg_from_container(struct __sk_buff *skb)
{
    return microseg_handle(skb, MS_DIR_EGRESS);
}

int microseg_to_container(struct __sk_buff *skb)
{
    return microseg_handle(skb, MS_DIR_INGRESS);
}

/* The floor for benchmarks: what any TC program costs before it does anything. */
int microseg_noop(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}

#ifdef MS_BENCH
/*
 * Benchmark-only entry points (bench/run.py compiles with -DMS_BENCH; nothing else does).
 * PROG_TEST_RUN repeats one frame; these rewrite it before each run so that run i is the
 * first packet of flow i: UDP to dst_base + i % dst_count from port sport_base + i / dst_count.
 * The new-flow path is then measured over a stream of new flows with warm code, and
 * microseg_bench_floor, which does the same rewrite and nothing else, is its floor.
 */
#define BENCH_COUNTER    0
#define BENCH_DST_BASE   1   /* host byte order */
#define BENCH_DST_COUNT  2
#define BENCH_SPORT_BASE 3
BPF_TABLE_PINNED("array", __u32, __u32, bench_flow_map, 4, MS_PIN("bench_flow_map"));

static __always_inline __u32 *bench_slot(__u32 idx)
{
    return bench_flow_map.lookup(&idx);
}

static __always_inline int bench_next_flow(struct __sk_buff *skb)
{
    __u32 *counter = bench_slot(BENCH_COUNTER);
    __u32 *dst_base = bench_slot(BENCH_DST_BASE);
    __u32 *dst_count = bench_slot(BENCH_DST_COUNT);
    __u32 *sport_base = bench_slot(BENCH_SPORT_BASE);
    if (!counter || !dst_base || !dst_count || !sport_base || !*dst_count)
        return -1;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct iphdr *iph = data + sizeof(struct ethhdr);
    struct udphdr *udp = (void *)(iph + 1);
    if ((void *)(udp + 1) > data_end)
        return -1;
    __u32 i = (*counter)++;   /* one CPU runs the bench: no atomic needed */
    iph->daddr = bpf_htonl(*dst_base + i % *dst_count);
    udp->source = bpf_htons(*sport_base + i / *dst_count);
    return 0;
}

int microseg_bench_new_flow(struct __sk_buff *skb)
{
    if (bench_next_flow(skb))
        return TC_ACT_SHOT;
    return microseg_handle(skb, MS_DIR_EGRESS);
}

int microseg_bench_floor(struct __sk_buff *skb)
{
    if (bench_next_flow(skb))
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}
#endif

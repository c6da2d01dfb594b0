/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: sessions (session_map) and what they are counted in.
 *
 * A session is keyed container-first (flow.h) and remembers the direction of the packet
 * that created it, so the flow its initiator sent can always be rebuilt. Three counts
 * follow the sessions the data plane creates and deletes: map_pressure (host-wide
 * sessions and half-open SYNs) and endpoint_usage (the same per endpoint). The monitor
 * rewrites them from full scans, since expiry and LRU eviction are invisible here.
 */
#ifndef MICROSEG_LIB_SESSION_H
#define MICROSEG_LIB_SESSION_H

#include "parse.h"
#include "policy.h"
#include "log.h"

#ifdef MS_CACHE_DENIED_FLOWS
/* Bench only: deny entries keyed so that only their initiator's side hits them, the other way
 * to hold a denied verdict (docs/architecture.md section 2), measured against no session. */
#define MS_DENY_ENTRIES 1
#else
#define MS_DENY_ENTRIES 0
#endif

/* ---- TCP tracking -------------------------------------------------------------- */

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
    /* Only the initiator's FIN is remembered: the switch below checks that the responder
     * acknowledges it (acks_orig_fin); no transition looks at what the responder's covers. */
    if (fin && orig) {
        s->fin_seq_orig = seq + payload + 1;
        s->flags |= SESSION_FLAG_FIN_ORIG;
    }
    int acks_orig_fin = !orig && ack && (s->flags & SESSION_FLAG_FIN_ORIG) &&
                        seq_after_eq(ack_seq, s->fin_seq_orig);

    switch (s->state) {
    case TCP_SYN_SENT:
        if (syn && !ack && orig)
            return 0;                       /* retransmitted SYN */
        if (syn && ack && !orig) {
            s->state = TCP_SYN_RECV;
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

/* ---- what sessions are counted in ---------------------------------------------- */

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

/* ---- creating, refreshing and ending sessions ---------------------------------- */

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
    s->flags = dir == MS_DIR_INGRESS ? SESSION_FLAG_INGRESS : 0;
    s->seq_init = 0;
    s->reserved_a = 0;
    s->policy_ver = epoch;
    s->fin_seq_orig = 0;
    s->reserved_b = 0;
    s->parser = 0;
    s->direction = dir;
    s->reserved = 0;
    s->ifindex = ifindex;
    s->reserved2 = 0;
}

/* Track the flow packet p starts, under key sk. Returns 1 when the session exists. */
static __always_inline int session_create(struct microseg_config *cfg, struct map_pressure *mp,
                                          struct endpoint_usage *u, struct session_key *sk,
                                          struct decision *d, struct packet *p)
{
    struct session_value ns = {};
    init_session(&ns, d, cfg->policy_epoch, p->f.direction, p->len, p->now, p->ifindex);
    if (p->f.protocol == IPPROTO_TCP)
        tcp_first_state(&ns, p->is_syn, p->seq);
    /* An LRU map evicts rather than failing once full; count what it must evict. */
    int evicting = mp && cfg->session_max && mp->total_sessions >= cfg->session_max;
    if (p->is_syn)
        half_open_inc(mp, u, &ns);
    if (session_map.insert(sk, &ns) != 0) {
        half_open_release(mp, &ns);
        if (mp)
            __sync_fetch_and_add(&mp->insertion_failures, 1);
        stat_add(STAT_INSERT_FAILURES, 1);
        return 0;
    }
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
    return 1;
}

/* Session slot s becomes the new flow packet p starts (port reuse after a close, or the
 * other side's own flow replacing a cut one); it stays its endpoint's. */
static __always_inline void session_restart(struct session_value *s, struct decision *d,
                                            __u32 epoch, struct packet *p,
                                            struct map_pressure *mp)
{
    half_open_release(mp, s);
    init_session(s, d, epoch, p->f.direction, p->len, p->now, s->ifindex);
    if (p->f.protocol != IPPROTO_TCP)
        return;
    tcp_first_state(s, p->is_syn, p->seq);
    if (p->is_syn) {
        __u32 ifindex = s->ifindex;
        half_open_inc(mp, endpoint_usage_map.lookup(&ifindex), s);
    }
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

static __always_inline void session_touch(struct session_value *s, struct packet *p)
{
    __sync_fetch_and_add(&s->packets, 1);
    __sync_fetch_and_add(&s->bytes, p->len);
    s->last_seen = p->now;
}

/* Moves the session's TCP state on; returns tcp_track's answer (1: port reuse). */
static __always_inline int session_track_tcp(struct map_pressure *mp, struct session_value *s,
                                             struct packet *p)
{
    int r = tcp_track(s, p->tcp_flags, s->direction == p->f.direction, p->seq, p->ack_seq,
                      p->payload);
    if (r < 0)
        stat_add(STAT_INVALID_STATE_TRANS, 1);
    half_open_settle(mp, s);
    return r;
}

/* ---- policy changes and the responder's own flows ------------------------------ */

/* The flow a session stands for, as its initiator sent it (policy sees no ICMP ids). */
static __always_inline void session_flow(struct session_key *sk, struct session_value *s,
                                         struct flow *f)
{
    flow_of_session_key(sk, s->direction, f);
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

static __always_inline int responder_opens_flow(struct session_value *s, struct packet *p)
{
    if (s->direction == p->f.direction)
        return 0;
    if (MS_DENY_ENTRIES)
        return s->action == MS_ACTION_DENY;
    return opens_own_flow(s, p->f.protocol, p->tcp_flags, p->icmp_type);
}

/* The flow s stood for is over (cut by policy, or closed): its slot may be reused. */
static __always_inline int session_over(struct session_value *s)
{
    return s->action == MS_ACTION_DENY || s->state == TCP_TIME_WAIT || s->state == TCP_CLOSE;
}

#endif /* MICROSEG_LIB_SESSION_H */

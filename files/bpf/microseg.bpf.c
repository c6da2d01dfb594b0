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
 *
 * microseg.h is the ABI shared with user space; lib/ holds one header per concern
 * (maps, stats, flow, parse, policy, log, session, guards). microseg_handle below reads
 * as the pipeline: parse, guards, session lookup, then one of the flow paths, each ending
 * in flow_verdict. BCC only rewrites map calls in the file it compiles, so the loader
 * splices the lib headers into this file before compiling (_loader.flatten_sources).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "microseg.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/flow.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/log.h"
#include "lib/session.h"
#include "lib/guards.h"

/* ---- the steps after parsing and the guards -------------------------------------- */

/* The last step of every decided packet: the counted verdict, remembered for the later
 * fragments when the packet is a first fragment. */
static __always_inline int flow_verdict(struct packet *p, __u8 action)
{
    if (p->first_fragment)
        fragment_remember(p, action);
    if (action == MS_ACTION_DENY)
        return verdict_drop(p->len);
    return verdict_pass(p->len);
}

/* An ICMP error quoting a packet of a tracked session gets that session's verdict (PMTU
 * discovery under default deny); it neither creates nor refreshes a session. Quoting no
 * session, it is left to policy as ICMP, untracked. */
static __always_inline int icmp_error_verdict(struct microseg_config *cfg, struct packet *p,
                                              void *data_end)
{
    struct session_key related = {};
    if (icmp_error_key(p, data_end, &related) != 0)
        return MS_NEXT;
    struct session_value *rs = session_map.lookup(&related);
    if (!rs)
        return MS_NEXT;
    stat_add(STAT_ICMP_RELATED, 1);
    if (rs->policy_ver != cfg->policy_epoch)
        reevaluate(cfg, &related, rs, p->ifindex, p->now);
    if (rs->action == MS_ACTION_DENY)
        return verdict_drop(p->len);
    return verdict_pass(p->len);
}

/* The first packet of a flow no session knows. */
static __always_inline int new_flow(struct microseg_config *cfg, struct session_key *sk,
                                    struct packet *p)
{
    struct map_pressure *mp = pressure_get();
    struct decision d = {};

    stat_add(STAT_NEW_SESSIONS, 1);
    struct endpoint_usage *u = endpoint_usage_get(p->ifindex);
    int verdict = guard_half_open(cfg, mp, u, p);
    if (verdict != MS_NEXT)
        return verdict;
    int degraded = new_flows_degraded(cfg, mp, u, p->now);
    decide(cfg, &p->f, &d, p->now);

    /* Never tracked: an ICMP error (it quotes no session), and a denied first packet,
     * which must leave nothing another initiator's packet could hit (conntrack never
     * confirms a dropped packet either). */
    int tracked = 0;
    if (!p->icmp_error && (d.action != MS_ACTION_DENY || MS_DENY_ENTRIES) && !degraded)
        tracked = session_create(cfg, mp, u, sk, &d, p);
    __u8 action = d.action;
    if (!tracked && !p->icmp_error)
        action = untracked_action(cfg, p, &d, degraded);
    log_new_flow(cfg, &p->f, &d, p->ifindex, p->now);
    return flow_verdict(p, action);
}

/* The responder side of session s opens a flow of its own: decided as its sender's; a
 * denied attempt leaves s as it is. */
static __always_inline int responder_new_flow(struct microseg_config *cfg,
                                              struct session_value *s, struct packet *p)
{
    struct decision d = {};

    stat_add(STAT_REVERSE_NEW_FLOWS, 1);
    decide(cfg, &p->f, &d, p->now);
    if (d.action != MS_ACTION_DENY && session_over(s))
        session_restart(s, &d, cfg->policy_epoch, p, pressure_get());
    log_new_flow(cfg, &p->f, &d, p->ifindex, p->now);
    return flow_verdict(p, d.action);
}

/* A new SYN on a finished TCP session (port reuse): a new flow, decided afresh. */
static __always_inline int port_reuse(struct microseg_config *cfg, struct map_pressure *mp,
                                      struct session_value *s, struct session_key *sk,
                                      struct packet *p)
{
    struct decision d = {};

    decide(cfg, &p->f, &d, p->now);
    if (d.action == MS_ACTION_DENY && !MS_DENY_ENTRIES)
        session_forget(mp, sk, s);   /* a denied first packet leaves nothing */
    else
        session_restart(s, &d, cfg->policy_epoch, p, mp);
    log_new_flow(cfg, &p->f, &d, p->ifindex, p->now);
    return flow_verdict(p, d.action);
}

/* A packet of a tracked flow: the session's verdict, its TCP state moved on. */
static __always_inline int established(struct microseg_config *cfg, struct session_value *s,
                                       struct session_key *sk, struct packet *p)
{
    stat_add(STAT_SESSION_HITS, 1);
    session_touch(s, p);
    if (p->f.protocol == IPPROTO_TCP) {
        struct map_pressure *mp = pressure_get();
        if (session_track_tcp(mp, s, p) > 0)
            return port_reuse(cfg, mp, s, sk, p);
    }
    return flow_verdict(p, s->action);
}

/* ---- the packet path ------------------------------------------------------------ */

static __always_inline int microseg_handle(struct __sk_buff *skb, __u8 dir)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct packet p = { .f.direction = dir, .len = skb->len, .now = bpf_ktime_get_ns(),
                        .ifindex = skb->ifindex, .icmp_type = 0xff };
    struct endpoint_value *ep = NULL;
    struct session_key sk;
    __u32 zero = 0;
    int verdict;

    stat_packet(STAT_TOTAL_PACKETS, STAT_TOTAL_BYTES, p.len);
    struct microseg_config *cfg = config_map.lookup(&zero);
    if (!cfg)
        return verdict_drop(p.len);   /* cannot happen for an array; fail closed */

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return verdict_truncated(p.len);
    verdict = guard_link_layer(skb, cfg, &p, eth, data_end, &ep);
    if (verdict != MS_NEXT)
        return verdict;
    if (parse_ipv4(&p, eth + 1, data_end) < 0)
        return verdict_truncated(p.len);
    verdict = guard_addresses(ep, &p);
    if (verdict != MS_NEXT)
        return verdict;
    verdict = guard_fragment(&p);
    if (verdict != MS_NEXT)
        return verdict;
    if (parse_l4(&p, data_end) < 0)
        return verdict_truncated(p.len);
    if (p.icmp_error) {
        verdict = icmp_error_verdict(cfg, &p, data_end);
        if (verdict != MS_NEXT)
            return verdict;
    }

    packet_session_key(&p, &sk);
    struct session_value *s = p.icmp_error ? NULL : session_map.lookup(&sk);
    if (!s)
        return new_flow(cfg, &sk, &p);
    if (s->policy_ver != cfg->policy_epoch)
        reevaluate(cfg, &sk, s, p.ifindex, p.now);
    if (responder_opens_flow(s, &p))
        return responder_new_flow(cfg, s, &p);
    return established(cfg, s, &sk, &p);
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

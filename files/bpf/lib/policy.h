/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: the policy verdict of a flow's first packet.
 *
 * plugins/module_utils/_compiler.py writes the maps this reads, and its simulate() in the
 * unit tests walks them the same way: change one, change the other.
 */
#ifndef MICROSEG_LIB_POLICY_H
#define MICROSEG_LIB_POLICY_H

#include "stats.h"
#include "flow.h"

struct decision {
    __u32 policy_id;     /* 0: the default action decided */
    __u8  action;
    __u8  exact;         /* an exact 5-tuple rule decided */
};

static __always_inline void port_bytes(__u8 *dst, __u16 port)
{
    dst[0] = port >> 8;
    dst[1] = port & 0xff;
}

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

    struct lpm_key rk = { .prefixlen = MS_LPM_IP_FULL, .class_id = MS_LPM_ROOT_CLASS(set, dir),
                          .ip = remote };
    struct range_value *rv = ip_range_map.lookup(&rk);
    if (!rv)
        return;
    if (!(rv->flags & RANGE_FLAG_FINAL)) {
        struct lpm_key lk = { .prefixlen = MS_LPM_IP_FULL, .class_id = rv->next_class,
                              .ip = local };
        rv = local_range_map.lookup(&lk);
        if (!rv)
            return;
    }
    if (!(rv->flags & RANGE_FLAG_FINAL)) {
        struct port_lpm_key ppk = { .prefixlen = MS_LPM_PORT_FULL, .class_id = rv->next_class,
                                    .protocol = f->protocol };
        port_bytes(ppk.port, f->dst_port);
        rv = port_range_map.lookup(&ppk);
        if (!rv)
            return;
    }
    if (!(rv->flags & RANGE_FLAG_FINAL)) {
        struct sport_lpm_key spk = { .prefixlen = MS_LPM_SPORT_FULL, .class_id = rv->next_class };
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
    struct flow r;
    struct decision d = {};
    flow_reverse(f, &r);
    lookup_policy(cfg, &r, &d, now, 0);
    return d.action != MS_ACTION_DENY;
}

#endif /* MICROSEG_LIB_POLICY_H */

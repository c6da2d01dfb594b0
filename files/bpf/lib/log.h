/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: rate-limited events on the log_events ring buffer, read by
 * the monitor (plugins/module_utils/_monitor.py) as struct log_event.
 */
#ifndef MICROSEG_LIB_LOG_H
#define MICROSEG_LIB_LOG_H

#include "policy.h"

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

/* A new flow's decision, when its rule asks for events. */
static __always_inline void log_new_flow(struct microseg_config *cfg, struct flow *f,
                                         struct decision *d, __u32 ifindex, __u64 now)
{
    if (d->action == MS_ACTION_LOG)
        emit_log(f, d, ifindex, cfg->policy_epoch, LOG_REASON_NEW_FLOW, cfg->log_rate_per_sec,
                 now);
}

#endif /* MICROSEG_LIB_LOG_H */

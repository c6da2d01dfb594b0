/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: the per-CPU counters (STAT_* in microseg.h) and the counted
 * verdicts every step returns through.
 *
 * Each counter is its own element of a per-CPU array, so counters that always move
 * together still take one lookup each (the kernel inlines those lookups); packing them
 * into one element would change a pinned map's layout and the reader in _maps.py.
 */
#ifndef MICROSEG_LIB_STATS_H
#define MICROSEG_LIB_STATS_H

#include <uapi/linux/pkt_cls.h>

#include "maps.h"

/* A step's answer when it leaves the packet to the next one. TC_ACT_UNSPEC's value, which
 * no step returns as a verdict. */
#define MS_NEXT (-1)

static __always_inline void stat_add(__u32 idx, __u64 val)
{
    __u64 *counter = stats_map.lookup(&idx);
    if (counter)
        *counter += val;   /* per-CPU slot: no atomic needed */
}

static __always_inline void stat_packet(__u32 packets_idx, __u32 bytes_idx, __u64 len)
{
    stat_add(packets_idx, 1);
    stat_add(bytes_idx, len);
}

static __always_inline int verdict_pass(__u64 len)
{
    stat_packet(STAT_ALLOWED_PACKETS, STAT_ALLOWED_BYTES, len);
    return TC_ACT_OK;
}

static __always_inline int verdict_drop(__u64 len)
{
    stat_packet(STAT_DENIED_PACKETS, STAT_DENIED_BYTES, len);
    return TC_ACT_SHOT;
}

/* Headers shorter than they claim, or than the frame: never guessed at, always dropped. */
static __always_inline int verdict_truncated(__u64 len)
{
    stat_add(STAT_TRUNCATED_DROPS, 1);
    return verdict_drop(len);
}

#endif /* MICROSEG_LIB_STATS_H */

/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: the pinned maps and the compile-time sizes that shape them.
 *
 * The sizes are -D flags from plugins/module_utils/_loader.py (cflags_for); the defaults
 * here only serve a compile without the loader. Every map is pinned, so sessions and
 * policy outlive a program upgrade: a map's key and value types are the ABI in
 * microseg.h, never defined here.
 */
#ifndef MICROSEG_LIB_MAPS_H
#define MICROSEG_LIB_MAPS_H

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

/* Map timestamps are bpf_ktime_get_ns() values. */
#define MS_NSEC_PER_SEC 1000000000ULL

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

#endif /* MICROSEG_LIB_MAPS_H */

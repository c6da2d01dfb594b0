/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: the checks around policy, and what happens under pressure.
 *
 * A guard_* step returns a counted verdict when it settles the packet, else MS_NEXT:
 *   L2 trust: VLAN tags, ARP an endpoint may send or receive, non-IPv4 ethertypes;
 *   anti-spoofing and the receive-side address check (endpoint_map);
 *   IPv4 fragments (later ones inherit the first one's verdict);
 *   half-open SYNs, host-wide and per endpoint.
 * Degradation (new flows untracked under critical pressure or an endpoint's session
 * quota) decides what an untracked first packet may still pass.
 */
#ifndef MICROSEG_LIB_GUARDS_H
#define MICROSEG_LIB_GUARDS_H

#include "stats.h"
#include "parse.h"
#include "policy.h"
#include "session.h"

/* ---- L2 trust and anti-spoofing ------------------------------------------------ */

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

/* Traffic policy does not look into: what the configured L3 mode says. */
static __always_inline int verdict_l3_mode(__u8 mode, __u64 len)
{
    if (mode == MS_L3_ALLOW) {
        stat_add(STAT_NON_IPV4_PASSED, 1);
        return verdict_pass(len);
    }
    stat_add(STAT_NON_IPV4_DROPPED, 1);
    return verdict_drop(len);
}

/* Everything but untagged IPv4 is settled here; *ep is the endpoint's entry when
 * anti-spoofing is on (the later guards check IPv4 against it). */
static __always_inline int guard_link_layer(struct __sk_buff *skb, struct microseg_config *cfg,
                                            struct packet *p, struct ethhdr *eth,
                                            void *data_end, struct endpoint_value **ep)
{
    __u16 eth_proto = eth->h_proto;
    /* A VLAN tag, in the frame or offloaded to skb metadata (veth does that): the frame is
     * not the container's plain traffic, and its inner packet is not policed as if it
     * were. Tagged frames follow the other-L3 mode, whichever way the tag travels. */
    if (skb->vlan_present || eth_proto == bpf_htons(ETH_P_8021Q) ||
        eth_proto == bpf_htons(ETH_P_8021AD)) {
        stat_add(STAT_VLAN_TAGGED, 1);
        return verdict_l3_mode(cfg->other_l3_mode, p->len);
    }
    if (cfg->flags & MS_CFG_ANTISPOOF) {
        __u32 ifindex = p->ifindex;
        *ep = endpoint_map.lookup(&ifindex);
    }
    if (eth_proto == bpf_htons(ETH_P_ARP)) {
        __u8 dir = p->f.direction;
        if (*ep && !arp_belongs(*ep, (void *)(eth + 1), data_end, dir)) {
            stat_add(dir == MS_DIR_EGRESS ? STAT_ARP_SPOOF_DROPS : STAT_NOT_FOR_ENDPOINT, 1);
            return verdict_drop(p->len);
        }
        stat_add(STAT_NON_IPV4_PASSED, 1);
        return verdict_pass(p->len);
    }
    if (eth_proto != bpf_htons(ETH_P_IP))
        return verdict_l3_mode(eth_proto == bpf_htons(ETH_P_IPV6) ? cfg->ipv6_mode :
                               cfg->other_l3_mode, p->len);
    return MS_NEXT;
}

static __always_inline int guard_addresses(struct endpoint_value *ep, struct packet *p)
{
    if (!ep)
        return MS_NEXT;
    if (p->f.direction == MS_DIR_EGRESS && ep->ip != p->f.src_ip) {
        stat_add(STAT_SPOOF_DROPS, 1);
        return verdict_drop(p->len);
    }
    if (p->f.direction == MS_DIR_INGRESS && !addressed_to(ep, p->f.dst_ip)) {
        /* A bridge floods unknown unicast to every port: such a frame is not this
         * container's, and deciding it here would create a session for someone else. */
        stat_add(STAT_NOT_FOR_ENDPOINT, 1);
        return verdict_drop(p->len);
    }
    return MS_NEXT;
}

/* ---- fragments ----------------------------------------------------------------- */

static __always_inline void frag_key_of(struct packet *p, struct frag_key *fk)
{
    fk->src_ip = p->f.src_ip;
    fk->dst_ip = p->f.dst_ip;
    fk->ip_id = p->ip_id;
    fk->protocol = p->f.protocol;
    fk->direction = p->f.direction;
}

static __always_inline int guard_fragment(struct packet *p)
{
    if (p->frag_off & IP_OFFMASK) {
        /* A later fragment has no ports: it gets its first fragment's verdict or none. */
        struct frag_key fk;
        frag_key_of(p, &fk);
        stat_add(STAT_FRAGMENTS, 1);
        struct frag_value *fv = frag_map.lookup(&fk);
        if (fv && fv->action != MS_ACTION_DENY)
            return verdict_pass(p->len);
        stat_add(STAT_FRAGMENT_DROPS, 1);
        return verdict_drop(p->len);
    }
    p->first_fragment = (p->frag_off & IP_MF) != 0;
    if (p->first_fragment)
        stat_add(STAT_FRAGMENTS, 1);
    return MS_NEXT;
}

/* A first fragment's verdict, for the later fragments of its datagram. */
static __always_inline void fragment_remember(struct packet *p, __u8 action)
{
    struct frag_key fk;
    struct frag_value fv = { .action = action };
    frag_key_of(p, &fk);
    frag_map.update(&fk, &fv);
}

/* ---- pressure and half-open SYNs ----------------------------------------------- */

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

static __always_inline int guard_half_open(struct microseg_config *cfg, struct map_pressure *mp,
                                           struct endpoint_usage *u, struct packet *p)
{
    if (!p->is_syn)
        return MS_NEXT;
    if (cfg->syn_flood_threshold && mp && mp->syn_sent_count >= cfg->syn_flood_threshold) {
        stat_add(STAT_TCP_SYN_FLOODS, 1);
        return verdict_drop(p->len);
    }
    if (u && cfg->endpoint_half_open_quota && u->half_open >= cfg->endpoint_half_open_quota) {
        /* This endpoint's own flood: its new SYNs drop, the others' do not. */
        stat_add(STAT_ENDPOINT_SYN_DROPS, 1);
        __sync_fetch_and_add(&u->syn_quota_drops, 1);
        return verdict_drop(p->len);
    }
    return MS_NEXT;
}

/* ---- degradation --------------------------------------------------------------- */

/* New flows go untracked: the host is at critical pressure, or this endpoint is over its
 * session quota (its flows degrade, the others' do not). */
static __always_inline int new_flows_degraded(struct microseg_config *cfg,
                                              struct map_pressure *mp,
                                              struct endpoint_usage *u, __u64 now)
{
    int degraded = pressure_level(cfg, mp, now) == PRESSURE_CRITICAL;
    if (u && cfg->endpoint_session_quota && u->sessions >= cfg->endpoint_session_quota) {
        stat_add(STAT_ENDPOINT_DEGRADED, 1);
        __sync_fetch_and_add(&u->degraded_flows, 1);
        degraded = 1;
    }
    return degraded;
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

/* The action for a first packet that got no session (denied, degraded, or the insert
 * failed): d's, unless degradation lets a denied one through. */
static __always_inline __u8 untracked_action(struct microseg_config *cfg, struct packet *p,
                                             struct decision *d, int degraded)
{
    if (d->action != MS_ACTION_DENY) {
        stat_add(STAT_UNTRACKED_PASSES, 1);
        return d->action;
    }
    if (!degraded)
        return d->action;
    if (degraded_passthrough(cfg, &p->f, d)) {
        stat_add(STAT_UNTRACKED_PASSES, 1);
        stat_add(STAT_DEGRADED_PASSTHROUGH, 1);
        return MS_ACTION_ALLOW;
    }
    if (reply_shaped(p->f.protocol, p->tcp_flags, p->icmp_type) &&
        reverse_allowed(cfg, &p->f, p->now)) {
        /* Untracked, an allowed flow's replies meet no session: a reply whose reversed
         * 5-tuple the policy allows as a new flow passes (a reflexive, stateless check,
         * for as long as new flows cannot be tracked). */
        stat_add(STAT_UNTRACKED_PASSES, 1);
        stat_add(STAT_DEGRADED_REPLIES, 1);
        return MS_ACTION_ALLOW;
    }
    stat_add(STAT_MAP_FULL_DROPS, 1);
    return d->action;
}

#endif /* MICROSEG_LIB_GUARDS_H */

/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: the 5-tuple as policy sees it, and its two orientations.
 *
 * A flow is kept as its packet travelled (policy rules are written that way); sessions
 * are keyed container-first, so that both directions of a flow meet one entry. Every
 * change of orientation goes through flow_reverse.
 */
#ifndef MICROSEG_LIB_FLOW_H
#define MICROSEG_LIB_FLOW_H

#include "microseg.h"

struct flow {
    __u32 src_ip;        /* as the packet travelled */
    __u32 dst_ip;
    __u16 src_port;      /* host order; 0 for protocols without ports (ICMP included) */
    __u16 dst_port;
    __u8  protocol;
    __u8  direction;     /* MS_DIR_*, seen from the container */
};

/* The same flow seen from its other end. */
static __always_inline void flow_reverse(const struct flow *f, struct flow *r)
{
    r->src_ip = f->dst_ip;
    r->dst_ip = f->src_ip;
    r->src_port = f->dst_port;
    r->dst_port = f->src_port;
    r->protocol = f->protocol;
    r->direction = f->direction ^ 1;
}

/* f as a packet going direction dir would carry it. */
static __always_inline void flow_orient(const struct flow *f, __u8 dir, struct flow *out)
{
    if (f->direction == dir)
        *out = *f;
    else
        flow_reverse(f, out);
}

/* The session key of a flow: its container-first (egress) orientation. */
static __always_inline void session_key_of_flow(const struct flow *f, struct session_key *sk)
{
    struct flow c;
    flow_orient(f, MS_DIR_EGRESS, &c);
    __builtin_memset(sk, 0, sizeof(*sk));   /* the padding is hashed too */
    sk->src_ip = c.src_ip;
    sk->dst_ip = c.dst_ip;
    sk->src_port = c.src_port;
    sk->dst_port = c.dst_port;
    sk->protocol = c.protocol;
}

/* The flow a session key stands for, oriented as its packets going direction dir. */
static __always_inline void flow_of_session_key(const struct session_key *sk, __u8 dir,
                                                struct flow *f)
{
    struct flow c = {
        .src_ip = sk->src_ip,
        .dst_ip = sk->dst_ip,
        .src_port = sk->src_port,
        .dst_port = sk->dst_port,
        .protocol = sk->protocol,
        .direction = MS_DIR_EGRESS,
    };
    flow_orient(&c, dir, f);
}

#endif /* MICROSEG_LIB_FLOW_H */

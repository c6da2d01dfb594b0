/* SPDX-License-Identifier: GPL-2.0-only OR GPL-3.0-or-later */
/*
 * ebpf.microseg data plane: reading a frame into a struct packet.
 *
 * Parsers only read and bound-check; they decide nothing. A negative return means the
 * headers are truncated (the caller drops, counted as such). Every header read is checked
 * against data_end, and lengths against the IPv4 tot_len too: Ethernet pads short frames,
 * so data_end alone would let padding pass for payload.
 */
#ifndef MICROSEG_LIB_PARSE_H
#define MICROSEG_LIB_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "flow.h"

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

#define IP_MF      0x2000
#define IP_OFFMASK 0x1fff

/* The first 8 bytes of any ICMP message, as an echo lays them out. */
struct icmp_echo_hdr {
    __u8  type;
    __u8  code;
    __u16 checksum;
    __u16 id;
    __u16 sequence;
};

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

/* What the later steps know of one packet. */
struct packet {
    struct flow f;          /* what policy sees: ICMP without ports */
    void *l4;               /* the transport header; parse_l4 checked what it read */
    __u64 len;
    __u64 now;
    __u32 ifindex;          /* the host-side interface of the hook */
    __u32 l4_room;          /* datagram bytes from l4 on, by tot_len */
    __u32 seq;              /* TCP only, host order */
    __u32 ack_seq;
    __u32 payload;          /* TCP payload bytes */
    __u16 ip_id;
    __u16 frag_off;         /* host order */
    __u16 session_port;     /* ICMP echo identifier: both ports of its session key */
    __u8  tcp_flags;
    __u8  icmp_type;        /* 0xff when not ICMP */
    __u8  icmp_error;       /* an ICMP error, quoting the packet it is about */
    __u8  first_fragment;
    __u8  is_syn;           /* a TCP SYN without ACK: a connection attempt */
};

static __always_inline int parse_ipv4(struct packet *p, void *l3, void *data_end)
{
    struct iphdr *iph = l3;
    if ((void *)(iph + 1) > data_end)
        return -1;
    __u32 ihl_bytes = (iph->ihl & 0xf) * 4;
    __u32 tot_len = bpf_ntohs(iph->tot_len);
    if (ihl_bytes < sizeof(*iph) || (void *)iph + ihl_bytes > data_end || tot_len < ihl_bytes)
        return -1;
    p->f.src_ip = iph->saddr;
    p->f.dst_ip = iph->daddr;
    p->f.protocol = iph->protocol;
    p->ip_id = iph->id;
    p->frag_off = bpf_ntohs(iph->frag_off);
    p->l4 = (void *)iph + ihl_bytes;
    p->l4_room = tot_len - ihl_bytes;
    return 0;
}

static __always_inline int parse_l4(struct packet *p, void *data_end)
{
    void *l4 = p->l4;
    if (p->f.protocol == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end || sizeof(*tcp) > p->l4_room)
            return -1;
        p->f.src_port = bpf_ntohs(tcp->source);
        p->f.dst_port = bpf_ntohs(tcp->dest);
        p->tcp_flags = ((__u8 *)tcp)[13];
        p->seq = bpf_ntohl(tcp->seq);
        p->ack_seq = bpf_ntohl(tcp->ack_seq);
        __u32 hdr = tcp->doff * 4;
        p->payload = p->l4_room > hdr ? p->l4_room - hdr : 0;
        p->is_syn = (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
    } else if (p->f.protocol == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end || sizeof(*udp) > p->l4_room)
            return -1;
        p->f.src_port = bpf_ntohs(udp->source);
        p->f.dst_port = bpf_ntohs(udp->dest);
    } else if (p->f.protocol == IPPROTO_ICMP) {
        struct icmp_echo_hdr *icmp = l4;
        if ((void *)(icmp + 1) > data_end || sizeof(*icmp) > p->l4_room)
            return -1;
        __u8 type = icmp->type;
        p->icmp_type = type;
        /* Echo request and reply share the identifier: it tells pings apart, so a ping
         * one way does not open the other way. Policy still sees ICMP without ports. */
        if (type == ICMP_ECHO || type == ICMP_ECHOREPLY)
            p->session_port = bpf_ntohs(icmp->id);
        else if (type == ICMP_DEST_UNREACH_TYPE || type == ICMP_TIME_EXCEEDED_TYPE ||
                 type == ICMP_PARAMETERPROB_TYPE)
            p->icmp_error = 1;
    }
    return 0;
}

/* The session key of the packet itself: its flow, and for ICMP the echo identifier. */
static __always_inline void packet_session_key(struct packet *p, struct session_key *sk)
{
    struct flow f = p->f;
    if (f.protocol == IPPROTO_ICMP) {
        f.src_port = p->session_port;
        f.dst_port = p->session_port;
    }
    session_key_of_flow(&f, sk);
}

/*
 * The session key of the packet an ICMP error quotes, or -1. The quoted packet must be
 * one the error's receiver sent: on the container's side of the quoted packet is the
 * container's own address, whole within the datagram, and not a later fragment.
 */
static __always_inline int icmp_error_key(struct packet *p, void *data_end,
                                          struct session_key *sk)
{
    struct iphdr *in = p->l4 + sizeof(struct icmp_echo_hdr);
    __u32 room = p->l4_room;
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
    /* The quoted packet travelled against the error: the container sent what it is told
     * about, or received what it reports. */
    struct flow quoted = {
        .src_ip = in->saddr,
        .dst_ip = in->daddr,
        .protocol = in->protocol,
        .direction = p->f.direction ^ 1,
    };
    if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP) {
        quoted.src_port = ((__u16)in_l4[0] << 8) | in_l4[1];
        quoted.dst_port = ((__u16)in_l4[2] << 8) | in_l4[3];
    } else if (in->protocol == IPPROTO_ICMP) {
        if (in_l4[0] != ICMP_ECHO && in_l4[0] != ICMP_ECHOREPLY)
            return -1;     /* an error about an error: never related */
        quoted.src_port = quoted.dst_port = ((__u16)in_l4[4] << 8) | in_l4[5];
    }
    __u32 container = p->f.direction == MS_DIR_EGRESS ? p->f.src_ip : p->f.dst_ip;
    session_key_of_flow(&quoted, sk);
    return sk->src_ip == container ? 0 : -1;
}

#endif /* MICROSEG_LIB_PARSE_H */

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Frames crafted byte by byte for BPF_PROG_TEST_RUN (no scapy needed)."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import socket
import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def ether(ethertype, payload, src=MAC_A, dst=MAC_B):
    frame = dst + src + struct.pack("!H", ethertype) + payload
    return frame + b"\0" * max(0, 60 - len(frame))


def ipv4(src, dst, proto, payload, ident=1, flags_frag=0x4000, options=b"", ttl=64):
    if len(options) % 4:
        raise ValueError("IP options must be a multiple of 4 bytes")
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, total, ident, flags_frag, ttl,
                         proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def tcp(sport, dport, flags, seq=1000, ack=0, payload=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport, dport, payload=b"x"):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(ident=1, seq=1, kind=8):
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"ping"
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def tcp_frame(src, dst, sport, dport, flags, seq=1000, ack=0, payload=b"", **ip):
    return ether(ETH_P_IP, ipv4(src, dst, 6, tcp(sport, dport, flags, seq, ack, payload), **ip))


def udp_frame(src, dst, sport, dport, payload=b"x", **ip):
    return ether(ETH_P_IP, ipv4(src, dst, 17, udp(sport, dport, payload), **ip))


def icmp_frame(src, dst, ident=1, kind=8, **ip):
    """ICMP echo request (kind 8) or reply (kind 0)."""
    return ether(ETH_P_IP, ipv4(src, dst, 1, icmp_echo(ident, kind=kind), **ip))


def arp_frame(sender="198.18.0.1", target="198.18.0.2", op=1, sha=MAC_A, tha=b"\0" * 6):
    """An ARP request (op 1, broadcast) or reply (op 2, to tha) for IPv4 over Ethernet."""
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + sha + socket.inet_aton(sender) + \
        tha + socket.inet_aton(target)
    return ether(ETH_P_ARP, body, src=sha, dst=b"\xff" * 6 if op == 1 else tha)


def ipv6_frame():
    header = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + b"\xfe\x80" + b"\0" * 13 + b"\x01" + \
        b"\xfe\x80" + b"\0" * 13 + b"\x02"
    return ether(ETH_P_IPV6, header + udp(1000, 2000, b""))


def vlan_frame():
    inner = ipv4("198.18.1.1", "198.18.2.1", 17, udp(1, 2))
    return ether(ETH_P_8021Q, struct.pack("!HH", 10, ETH_P_IP) + inner)


def udp_fragments(src, dst, sport, dport, payload, ident=777, first_size=64):
    """A UDP datagram split into two IPv4 fragments: (first, second) frames."""
    datagram = udp(sport, dport, payload)
    first, rest = datagram[:first_size], datagram[first_size:]
    frag1 = ether(ETH_P_IP, ipv4(src, dst, 17, first, ident=ident, flags_frag=0x2000))
    frag2 = ether(ETH_P_IP, ipv4(src, dst, 17, rest, ident=ident,
                                 flags_frag=first_size // 8))
    return frag1, frag2


def icmp_error(src, dst, quoted, kind=3, code=4, mtu=1280, **ip):
    """An ICMP error (default: destination unreachable, fragmentation needed, next-hop MTU)
    from src to dst quoting `quoted` (an IPv4 packet: its header and first 8 payload bytes
    are kept, as RFC 792 routers send)."""
    ihl = (quoted[0] & 0xf) * 4
    rest = struct.pack("!HH", 0, mtu) if (kind, code) == (3, 4) else b"\0\0\0\0"
    body = struct.pack("!BBH", kind, code, 0) + rest + quoted[:ihl + 8]
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ether(ETH_P_IP, ipv4(src, dst, 1, body, **ip))


def ip_packet(frame):
    """The IPv4 packet inside an Ethernet frame built here (padding cut off)."""
    total = struct.unpack("!H", frame[16:18])[0]
    return frame[14:14 + total]

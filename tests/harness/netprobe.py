# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tiny network probe run inside a namespace; prints one word per result.

  serve tcp|udp PORT             echo server (prints "listening" when ready)
  serve-all PROTO:PORT...        one process serving each, e.g. tcp:80 udp:53 (a container's
                                 entrypoint); prints "listening" when all are bound
  tcp HOST PORT [TIMEOUT]        connect, send, expect the echo      -> ok | fail
  udp HOST PORT [TIMEOUT]        send a datagram, expect the echo    -> ok | fail
  icmp HOST [TIMEOUT]            one echo request over a raw socket  -> ok | fail
  synflood HOST PORT COUNT [START]  COUNT bare SYNs from distinct source ports -> sent N
  hold HOST PORT                 open TCP, then echo one message per stdin line:
                                 prints ok/fail per line (for cutting established flows)
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import signal
import socket
import struct
import sys
import threading
import time


def _echo(conn):
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def serve(proto, port, announce=True):
    if proto == "tcp":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(64)
        if announce:
            print("listening", flush=True)
        while True:
            conn, _addr = srv.accept()
            worker = threading.Thread(target=_echo, args=(conn,))
            worker.daemon = True   # one process: stopping its pid stops every connection
            worker.start()
    else:
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("0.0.0.0", port))
        if announce:
            print("listening", flush=True)
        while True:
            data, addr = srv.recvfrom(65536)
            srv.sendto(data, addr)


class _Listener(threading.Thread):

    def __init__(self, proto, port):
        super(_Listener, self).__init__()
        self.daemon = True
        self.proto, self.port = proto, port
        self.ready = threading.Event()
        self.error = None

    def run(self):
        try:
            serve(self.proto, self.port, announce=False)
        except OSError as exc:
            self.error = exc
        finally:
            self.ready.set()


def serve_all(specs):
    """Serve every PROTO:PORT; each listener binds before the next starts."""
    # As a container's pid 1 nothing would end it on SIGTERM (podman stop waits, then kills).
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    workers = []
    for spec in specs:
        proto, port = spec.split(":")
        worker = _Listener(proto, int(port))
        worker.start()
        worker.ready.wait(0.5)      # serve() only returns on failure; a bound one blocks
        if worker.error:
            raise SystemExit("cannot serve %s: %s" % (spec, worker.error))
        workers.append(worker)
    print("listening", flush=True)
    for worker in workers:
        worker.join()


def tcp(host, port, timeout):
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
        conn.sendall(b"hello")
        ok = conn.recv(16) == b"hello"
        conn.close()
        return ok
    except (OSError, socket.timeout):
        return False


def udp(host, port, timeout, size=5):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    payload = (b"x" * size)
    try:
        sock.sendto(payload, (host, port))
        data, _addr = sock.recvfrom(65536)
        return data == payload
    except (OSError, socket.timeout):
        return False
    finally:
        sock.close()


def _checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def icmp(host, timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(timeout)
    ident = os.getpid() & 0xffff
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"microseg"
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    deadline = time.time() + timeout
    try:
        sock.sendto(body, (host, 0))
        while time.time() < deadline:
            data, addr = sock.recvfrom(1024)
            ihl = (data[0] & 0xf) * 4
            kind, _code, _sum, rid, _seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if addr[0] == host and kind == 0 and rid == ident:
                return True
    except (OSError, socket.timeout):
        return False
    finally:
        sock.close()
    return False


def synflood(host, port, count, start=0):
    """Bare SYNs over a raw TCP socket (the kernel adds the IP header); nothing answers
    them when HOST is a static neighbour with no owner, so each stays SYN_SENT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((host, port))
    src = socket.inet_aton(probe.getsockname()[0])
    probe.close()
    dst = socket.inet_aton(host)
    sent = 0
    for i in range(start, start + count):
        # Distinct (source port, destination port) pairs: every SYN is a new flow.
        sport = 20000 + (i * 7919) % 40000
        dport = port + i // 40000
        header = struct.pack("!HHIIBBHHH", sport, dport, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(header))
        header = header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]
        sock.sendto(header, (host, 0))
        sent += 1
    sock.close()
    return sent


def hold(host, port, timeout):
    conn = socket.create_connection((host, port), timeout=timeout)
    print("connected", flush=True)
    for line in sys.stdin:
        msg = line.strip().encode() or b"."
        try:
            conn.sendall(msg)
            ok = conn.recv(64) == msg
        except (OSError, socket.timeout):
            ok = False
        print("ok" if ok else "fail", flush=True)
        if not ok:
            break


def main(argv):
    cmd = argv[0]
    if cmd == "serve":
        serve(argv[1], int(argv[2]))
        return
    if cmd == "serve-all":
        serve_all(argv[1:])
        return
    if cmd == "synflood":
        print("sent %d" % synflood(argv[1], int(argv[2]), int(argv[3]),
                                   int(argv[4]) if len(argv) > 4 else 0))
        return
    if cmd == "hold":
        hold(argv[1], int(argv[2]), float(argv[3]) if len(argv) > 3 else 1.0)
        return
    timeout = float(argv[-1]) if (cmd == "icmp" and len(argv) > 2) or len(argv) > 3 else 1.0
    if cmd == "tcp":
        ok = tcp(argv[1], int(argv[2]), timeout)
    elif cmd == "udp":
        ok = udp(argv[1], int(argv[2]), timeout)
    elif cmd == "udpbig":
        ok = udp(argv[1], int(argv[2]), timeout, size=4000)
    elif cmd == "icmp":
        ok = icmp(argv[1], timeout)
    else:
        raise SystemExit("unknown command %s" % cmd)
    print("ok" if ok else "fail")


if __name__ == "__main__":
    main(sys.argv[1:])

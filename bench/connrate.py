# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Short-connection rate and request/response latency over TCP (stdlib only).

Measures, between two hosts (here: two container namespaces):
- rate: new TCP connections per second over a fixed duration, each one a complete short
  exchange (connect, send a small request, receive the reply, close);
- latency: request/response round-trip time on one persistent connection, N ping-pongs,
  reported as p50/p99 in microseconds.

    connrate.py serve PORT [PORT ...]       echo server on every PORT; prints "listening"
    connrate.py rate HOST PORT SECONDS [CLIENTS]
                                            -> JSON {connections, failed, seconds, per_second,
                                               clients}; CLIENTS processes at once (default 1)
    connrate.py latency HOST PORT COUNT     -> JSON {count, p50_us, p99_us, mean_us, max_us}
    connrate.py probe HOST PORT [TIMEOUT]   one exchange -> "ok" or "fail"
    connrate.py connect HOST PORT [TIMEOUT] TCP handshake only -> "ok" or "fail"

All results are JSON on stdout. The server is one thread on epoll so that its cost per
connection is small and steady: a thread per connection would add more jitter than the
filters under test cost.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import selectors
import socket
import struct
import sys
import time

REQUEST = b"GET /x HTTP/1.0\r\n\r\n"    # small request; the server echoes it as the reply
# Abortive close (RST): the client would otherwise leave one TIME_WAIT socket per
# connection and run out of ephemeral ports within seconds at thousands per second.
LINGER_RST = struct.pack("ii", 1, 0)


def serve(ports):
    sel = selectors.DefaultSelector()
    for port in ports:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4096)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, None)
    print("listening", flush=True)
    while True:
        for key, _mask in sel.select():
            if key.data is None:
                try:
                    conn, _peer = key.fileobj.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, "conn")
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                try:
                    # Replies are tiny: the socket buffer always takes them whole.
                    conn.send(data)
                    continue
                except OSError:
                    pass
            sel.unregister(conn)
            conn.close()


def _exchange(host, port, timeout):
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(timeout)
        conn.connect((host, port))
        conn.sendall(REQUEST)
        got = b""
        while len(got) < len(REQUEST):
            chunk = conn.recv(4096)
            if not chunk:
                break
            got += chunk
        return got == REQUEST
    finally:
        conn.close()


def rate(host, port, seconds):
    done = failed = 0
    started = time.monotonic()
    deadline = started + seconds
    now = started
    while now < deadline:
        try:
            if _exchange(host, port, 1.0):
                done += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        now = time.monotonic()
    elapsed = now - started
    return {"connections": done, "failed": failed, "seconds": round(elapsed, 4),
            "per_second": done / elapsed}


def rate_parallel(host, port, seconds, clients):
    """CLIENTS forked copies of rate() at once; their counts add up."""
    if clients <= 1:
        return dict(rate(host, port, seconds), clients=1)
    children = []
    for _index in range(clients):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                os.write(write_end, json.dumps(rate(host, port, seconds)).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    results = []
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as handle:
            results.append(json.loads(handle.read().decode()))
        os.waitpid(pid, 0)
    done = sum(r["connections"] for r in results)
    return {"connections": done, "failed": sum(r["failed"] for r in results),
            "seconds": max(r["seconds"] for r in results),
            "per_second": sum(r["per_second"] for r in results), "clients": clients}


def _percentile(ordered, fraction):
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def latency(host, port, count):
    conn = socket.create_connection((host, port), timeout=2.0)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter
    samples = []
    try:
        # A few untimed round trips first: the first ones pay for cold caches and the
        # filters' first-packet work, which the connection rate already measures.
        for index in range(count + 50):
            started = clock()
            conn.sendall(REQUEST)
            got = b""
            while len(got) < len(REQUEST):
                chunk = conn.recv(4096)
                if not chunk:
                    raise OSError("server closed the connection")
                got += chunk
            if index >= 50:
                samples.append(clock() - started)
    finally:
        conn.close()
    samples.sort()
    return {"count": count,
            "p50_us": round(_percentile(samples, 0.50) * 1e6, 1),
            "p99_us": round(_percentile(samples, 0.99) * 1e6, 1),
            "mean_us": round(sum(samples) / len(samples) * 1e6, 1),
            "max_us": round(samples[-1] * 1e6, 1)}


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "serve" and args:
        serve([int(port) for port in args])
    elif cmd == "rate" and len(args) in (3, 4):
        clients = int(args[3]) if len(args) == 4 else 1
        print(json.dumps(rate_parallel(args[0], int(args[1]), float(args[2]), clients)))
    elif cmd == "latency" and len(args) == 3:
        print(json.dumps(latency(args[0], int(args[1]), int(args[2]))))
    elif cmd in ("probe", "connect") and len(args) in (2, 3):
        timeout = float(args[2]) if len(args) == 3 else 1.0
        try:
            if cmd == "probe":
                ok = _exchange(args[0], int(args[1]), timeout)
            else:
                socket.create_connection((args[0], int(args[1])), timeout=timeout).close()
                ok = True
        except OSError:
            ok = False
        print("ok" if ok else "fail")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small TCP client/server for bench/traffic.py (stdlib only).

  serve PORT                    echo server (prints "listening")
  rate HOST PORT SECONDS        connect, send 32 bytes, read the echo, close; repeat -> JSON
  latency HOST PORT COUNT       one connection, COUNT ping-pongs -> JSON p50/p99 in µs
  probe HOST PORT               one exchange with a 0.5 s timeout -> ok | fail
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import socket
import sys
import threading
import time

MESSAGE = b"x" * 32


def _echo(conn):
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def serve(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(512)
    print("listening", flush=True)
    while True:
        conn, _peer = srv.accept()
        worker = threading.Thread(target=_echo, args=(conn,))
        worker.daemon = True
        worker.start()


def exchange(host, port, timeout):
    conn = socket.create_connection((host, port), timeout=timeout)
    try:
        # RST instead of TIME_WAIT on close: thousands of connections per second would
        # otherwise exhaust the client's ephemeral ports within one run.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.sendall(MESSAGE)
        got = b""
        while len(got) < len(MESSAGE):
            chunk = conn.recv(4096)
            if not chunk:
                break
            got += chunk
        return got == MESSAGE
    finally:
        conn.close()


def rate(host, port, seconds):
    done = failed = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            if exchange(host, port, 1.0):
                done += 1
            else:
                failed += 1
        except OSError:
            failed += 1
    elapsed = time.monotonic() - started
    return {"connections": done, "failed": failed, "seconds": elapsed,
            "per_second": done / elapsed}


def latency(host, port, count):
    conn = socket.create_connection((host, port), timeout=2.0)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for _index in range(count):
            started = time.perf_counter()
            conn.sendall(MESSAGE)
            got = b""
            while len(got) < len(MESSAGE):
                got += conn.recv(4096)
            times.append((time.perf_counter() - started) * 1e6)
    finally:
        conn.close()
    times.sort()
    return {"count": count, "p50_us": times[len(times) // 2],
            "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))]}


def main(argv):
    cmd = argv[0]
    if cmd == "serve":
        serve(int(argv[1]))
    elif cmd == "rate":
        print(json.dumps(rate(argv[1], int(argv[2]), float(argv[3]))))
    elif cmd == "latency":
        print(json.dumps(latency(argv[1], int(argv[2]), int(argv[3]))))
    elif cmd == "probe":
        try:
            print("ok" if exchange(argv[1], int(argv[2]), 0.5) else "fail")
        except OSError:
            print("fail")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

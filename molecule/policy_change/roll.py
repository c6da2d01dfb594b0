#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hold TCP connections across the lab fleet, roll a policy change with site.yml one host
at a time, then send on every held connection again.

Kept: h1/web -> h2/db:5432 (web-to-db-postgres still allows it).
Cut:  h1/other -> h2/web:80 and h2/other -> h1/web:80 (the change denies other -> web http).
Exit status 1 unless every connection ends as expected.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FLEET = os.path.join(ROOT, "lab", "fleet.py")
PROBE = os.path.join(ROOT, "tests", "harness", "netprobe.py")

# (source host, source container, destination host, destination container, port, kept?)
FLOWS = [
    ("h1", "web", "h2", "db", 5432, True),
    ("h1", "other", "h2", "web", 80, False),
    ("h2", "other", "h1", "web", 80, False),
]
ADDRESS = {"web": 10, "db": 20, "other": 30}


def address(host, container):
    return "198.18.%d.%d" % (10 + int(host[1:]), ADDRESS[container])


def in_container(host, container, argv, **kw):
    cmd = [sys.executable, FLEET, "exec", host, "--container", container, "--"] + argv
    return subprocess.Popen(cmd, start_new_session=True, universal_newlines=True, **kw)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--change", required=True, help="extra vars file with the change")
    args = parser.parse_args()
    servers = []
    holders = []
    failures = 0
    try:
        for dst in set((f[2], f[3], f[4]) for f in FLOWS):
            proc = in_container(dst[0], dst[1], ["/usr/bin/python3", PROBE, "serve", "tcp",
                                                 str(dst[2])], stdout=subprocess.PIPE)
            assert proc.stdout.readline().strip() == "listening"
            servers.append(proc)
        for src_host, src, dst_host, dst, port, _kept in FLOWS:
            proc = in_container(src_host, src, ["/usr/bin/python3", PROBE, "hold",
                                                address(dst_host, dst), str(port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            line = proc.stdout.readline().strip()
            proc.stdin.write("before\n")
            proc.stdin.flush()
            before = proc.stdout.readline().strip()
            print("%s/%s -> %s/%s:%d before the change: %s, %s"
                  % (src_host, src, dst_host, dst, port, line, before))
            if line != "connected" or before != "ok":
                failures += 1
            holders.append(proc)
        cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
               "-i", os.path.join(ROOT, "lab", "inventory"),
               os.path.join(ROOT, "playbooks", "site.yml"),
               "-e", "@" + args.change, "-e", "microseg_site_serial=1"]
        rolled = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, check=False)
        recap = rolled.stdout[rolled.stdout.rfind("PLAY RECAP"):]
        print(recap.strip())
        if rolled.returncode:
            print(rolled.stdout[-3000:])
            return 1
        for proc, (src_host, src, dst_host, dst, port, kept) in zip(holders, FLOWS):
            proc.stdin.write("after\n")
            proc.stdin.flush()
            after = proc.stdout.readline().strip() or "fail"
            verdict = "kept" if after == "ok" else "cut"
            expected = "kept" if kept else "cut"
            print("%s/%s -> %s/%s:%d after the change: %s (expected %s)"
                  % (src_host, src, dst_host, dst, port, verdict, expected))
            if verdict != expected:
                failures += 1
    finally:
        for proc in holders + servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    print("%d unexpected" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real traffic between two container namespaces on a bridge, filtered five ways.

Contenders: no filter; microseg on both hooks of both veths; nftables bridge-family filter
with N linear rules; nftables with one verdict map; iptables (br_netfilter + physdev) with N
linear rules. Each policy is default deny with N rules, the allowed flow (client -> server,
tcp/5201-5202) matching the last one. For N = 10, 1,000, 10,000 and every round, the
contenders run in turn (alternating), measuring bulk TCP throughput (iperf3), short
connections per second and request/response latency (bench/connrate.py).

Writes bench/traffic.md, bench/traffic.json and bench/traffic.png. Run as root from the
collection root with the collection importable (make bench does).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.tests.functional.datapath import Datapath

HERE = os.path.dirname(os.path.abspath(__file__))
CONNRATE = os.path.join(HERE, "connrate.py")
BRIDGE = "msbbr0"
CLIENT = ("msb-client", "msbc", "198.18.250.10")
SERVER = ("msb-server", "msbs", "198.18.250.20")
IPERF_PORT, RATE_PORT, CLOSED_PORT = 5201, 5202, 5203
CONTENDERS = ("microseg", "nft-linear", "nft-sets", "iptables-linear")


def sh(*argv, **kw):
    check = kw.pop("check", True)
    return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=check, **kw)


def say(text):
    sys.stderr.write("  traffic: %s\n" % text)
    sys.stderr.flush()


def filler(i):
    """The i-th rule that never matches the test traffic (198.18.252-253.x)."""
    return ("198.18.%d.%d" % (252 + (i >> 16 & 1), i >> 8 & 0xff),
            "198.18.254.%d" % (i & 0xff), 1024 + i % 60000)


# ---- topology ---------------------------------------------------------------------------

def build():
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for netns, veth, address in (CLIENT, SERVER):
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % (veth,))
        sh("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "-n", netns, "addr", "add", address + "/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
    time.sleep(1.5)   # bridge ports through listening/learning


def teardown(processes):
    for proc in processes:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    for netns, veth, _address in (CLIENT, SERVER):
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", netns, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def start_servers():
    iperf = subprocess.Popen(["ip", "netns", "exec", SERVER[0], "iperf3", "-s", "-p",
                              str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    rate = subprocess.Popen(["ip", "netns", "exec", SERVER[0], sys.executable, CONNRATE,
                             "serve", str(RATE_PORT)], stdout=subprocess.PIPE,
                            universal_newlines=True)
    if rate.stdout.readline().strip() != "listening":
        raise RuntimeError("connrate server did not start")
    closed = subprocess.Popen(["ip", "netns", "exec", SERVER[0], sys.executable, CONNRATE,
                               "serve", str(CLOSED_PORT)], stdout=subprocess.PIPE,
                              universal_newlines=True)
    closed.stdout.readline()
    time.sleep(0.5)
    return [iperf, rate, closed]


def in_client(*argv):
    return sh("ip", "netns", "exec", CLIENT[0], *argv, check=False)


# ---- contenders -------------------------------------------------------------------------

class NoFilter:
    name = "none"

    def apply(self, count):
        pass

    def clear(self):
        pass


class Microseg:
    name = "microseg"

    def __init__(self):
        self.dp = Datapath(sizes={"policy_map_size": 65536, "range_map_size": 65536,
                                  "session_map_size": 65536, "rule_stats_size": 65536})
        ipr = _netlink.open_route()
        try:
            for _netns, veth, _address in (CLIENT, SERVER):
                index = ipr.link_lookup(ifname=veth)[0]
                _netlink.add_clsact(ipr, index)
        finally:
            ipr.close()

    def apply(self, count):
        rules = []
        for i in range(count - 1):
            src, dst, port = filler(i)
            rules.append({"name": "filler-%d" % i, "direction": "both", "src": src + "/32",
                          "dst": dst + "/32", "protocol": "tcp", "dst_ports": [port],
                          "action": "allow"})
        rules.append({"name": "client-to-server", "direction": "both", "src": CLIENT[2] + "/32",
                      "dst": SERVER[2] + "/32", "protocol": "tcp",
                      "dst_ports": ["%d-%d" % (IPERF_PORT, RATE_PORT)], "action": "allow"})
        _policy.run({"rules": rules, "segments": {}, "state": "overridden",
                     "default_action": {"egress": "deny", "ingress": "deny"},
                     "pin_path": self.dp.pin_path}, False, False)
        self.dp.maps.clear("session_map")
        ipr = _netlink.open_route()
        try:
            for _netns, veth, _address in (CLIENT, SERVER):
                index = ipr.link_lookup(ifname=veth)[0]
                _netlink.attach(ipr, index, "ingress", self.dp.fds["microseg_from_container"],
                                "microseg_from_container")
                _netlink.attach(ipr, index, "egress", self.dp.fds["microseg_to_container"],
                                "microseg_to_container")
        finally:
            ipr.close()

    def clear(self):
        ipr = _netlink.open_route()
        try:
            for _netns, veth, _address in (CLIENT, SERVER):
                index = ipr.link_lookup(ifname=veth)
                for hook in ("ingress", "egress"):
                    if index and _netlink.our_filter(ipr, index[0], hook):
                        _netlink.detach(ipr, index[0], hook)
        finally:
            ipr.close()

    def close(self):
        self.clear()
        self.dp.close()


class NftLinear:
    name = "nft-linear"
    table = "msb_bench"

    def ruleset(self, count):
        lines = ["table bridge %s {" % self.table,
                 "  chain forward {",
                 "    type filter hook forward priority 0; policy drop;",
                 "    ether type arp accept"]
        for i in range(count - 1):
            src, dst, port = filler(i)
            lines.append("    ip saddr %s ip daddr %s tcp dport %d accept" % (src, dst, port))
        # The bridge family has no conntrack here (nf_conntrack_bridge is not built), so
        # replies are matched by a rule of their own - also after the N-1 others.
        lines.append("    ip saddr %s ip daddr %s tcp dport %d-%d accept"
                     % (CLIENT[2], SERVER[2], IPERF_PORT, RATE_PORT))
        lines.append("    ip saddr %s ip daddr %s tcp sport %d-%d accept"
                     % (SERVER[2], CLIENT[2], IPERF_PORT, RATE_PORT))
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    def apply(self, count):
        proc = subprocess.run(["nft", "-f", "-"], input=self.ruleset(count),
                              universal_newlines=True, stderr=subprocess.PIPE, check=False)
        if proc.returncode:
            raise RuntimeError("nft: %s" % proc.stderr)

    def clear(self):
        sh("nft", "delete", "table", "bridge", self.table, check=False)


class NftSets(NftLinear):
    name = "nft-sets"

    def ruleset(self, count):
        elements = []
        for i in range(count - 1):
            src, dst, port = filler(i)
            elements.append("%s . %s . %d : accept" % (src, dst, port))
        replies = []
        for port in (IPERF_PORT, RATE_PORT):
            elements.append("%s . %s . %d : accept" % (CLIENT[2], SERVER[2], port))
            replies.append("%s . %s . %d : accept" % (SERVER[2], CLIENT[2], port))
        return ("table bridge %s {\n"
                "  map allowed {\n"
                "    type ipv4_addr . ipv4_addr . inet_service : verdict\n"
                "    elements = { %s }\n"
                "  }\n"
                "  map replies {\n"
                "    type ipv4_addr . ipv4_addr . inet_service : verdict\n"
                "    elements = { %s }\n"
                "  }\n"
                "  chain forward {\n"
                "    type filter hook forward priority 0; policy drop;\n"
                "    ether type arp accept\n"
                "    ip saddr . ip daddr . tcp dport vmap @allowed\n"
                "    ip saddr . ip daddr . tcp sport vmap @replies\n"
                "  }\n"
                "}\n" % (self.table, ", ".join(elements), ", ".join(replies)))


class IptablesLinear:
    name = "iptables-linear"
    chain = "MSB_BENCH"

    def __init__(self):
        if not os.path.exists("/proc/sys/net/bridge") and os.path.exists("/sbin/modprobe"):
            sh("/sbin/modprobe", "br_netfilter", check=False)
        if not os.path.exists("/proc/sys/net/bridge"):
            raise RuntimeError("iptables-linear needs br_netfilter")
        self.saved = sh("sysctl", "-n", "net.bridge.bridge-nf-call-iptables",
                        check=False).stdout.strip()
        # iptables-nft creates "table ip filter" on first use; remove it again if we did.
        self.had_table = "table ip filter" in sh("nft", "list", "tables", check=False).stdout

    def apply(self, count):
        lines = ["*filter", ":%s - [0:0]" % self.chain,
                 "-A FORWARD -m physdev --physdev-is-bridged -j %s" % self.chain,
                 "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT" % self.chain]
        for i in range(count - 1):
            src, dst, port = filler(i)
            lines.append("-A %s -s %s/32 -d %s/32 -p tcp --dport %d -j ACCEPT"
                         % (self.chain, src, dst, port))
        lines.append("-A %s -s %s/32 -d %s/32 -p tcp --dport %d:%d -j ACCEPT"
                     % (self.chain, CLIENT[2], SERVER[2], IPERF_PORT, RATE_PORT))
        lines += ["-A %s -j DROP" % self.chain, "COMMIT"]
        proc = subprocess.run(["iptables-restore", "--noflush"], input="\n".join(lines) + "\n",
                              universal_newlines=True, stderr=subprocess.PIPE, check=False)
        if proc.returncode:
            raise RuntimeError("iptables-restore: %s" % proc.stderr)
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")

    def clear(self):
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=%s" % (self.saved or "0"),
           check=False)
        sh("iptables", "-D", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j",
           self.chain, check=False)
        sh("iptables", "-F", self.chain, check=False)
        sh("iptables", "-X", self.chain, check=False)

    def close(self):
        self.clear()
        rules = [line for line in sh("iptables-save", "-t", "filter", check=False).stdout
                 .splitlines() if line.startswith("-A") or line.startswith(":MS")]
        if not self.had_table and not rules:
            sh("nft", "delete", "table", "ip", "filter", check=False)


# ---- measures ---------------------------------------------------------------------------

def enforced():
    """The allowed port answers and a port the policy does not name does not."""
    ok = in_client(sys.executable, CONNRATE, "probe", SERVER[2], str(RATE_PORT)).stdout.strip()
    closed = in_client(sys.executable, CONNRATE, "probe", SERVER[2],
                       str(CLOSED_PORT)).stdout.strip()
    return ok, closed


def measure(seconds):
    iperf = in_client("iperf3", "-c", SERVER[2], "-p", str(IPERF_PORT), "-t", str(seconds),
                      "-J")
    gbps = json.loads(iperf.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    rate = json.loads(in_client(sys.executable, CONNRATE, "rate", SERVER[2], str(RATE_PORT),
                                str(seconds)).stdout)
    lat = json.loads(in_client(sys.executable, CONNRATE, "latency", SERVER[2], str(RATE_PORT),
                               "3000").stdout)
    return {"gbps": gbps, "conn_per_s": rate["per_second"], "p50_us": lat["p50_us"],
            "p99_us": lat["p99_us"]}


def median_spread(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


def report(samples, counts):
    """Markdown tables from {(contender, N): [measure dicts]}."""
    base = samples[("none", 0)]

    def cell(values, fmt):
        med, low, high = median_spread(values)
        return ("%s (%s-%s)" % (fmt, fmt, fmt)) % (med, low, high)

    out = []
    for key, title, fmt, ratio in (
            ("gbps", "Bulk TCP throughput, Gbit/s (iperf3)", "%.2f", True),
            ("conn_per_s", "Short connections per second", "%.0f", True),
            ("p50_us", "Request/response latency p50, µs", "%.0f", False),
            ("p99_us", "Request/response latency p99, µs", "%.0f", False)):
        rows = [("none", "-", cell([s[key] for s in base], fmt), "1.00")]
        for name in CONTENDERS:
            for count in counts:
                values = [s[key] for s in samples[(name, count)]]
                rel = statistics.median(
                    [v / b[key] for v, b in zip(values, base)]) if ratio else \
                    statistics.median(values) / statistics.median([b[key] for b in base])
                rows.append((name, "{:,}".format(count), cell(values, fmt), "%.2f" % rel))
        out.append("### %s\n\n| contender | N rules | median (min-max) | vs none |\n"
                   "|---|---|---|---|\n%s" % (title, "\n".join("| %s |" % " | ".join(r)
                                                               for r in rows)))
    top = max(counts)
    ms = statistics.median([s["conn_per_s"] for s in samples[("microseg", top)]])
    ipt = statistics.median([s["conn_per_s"] for s in samples[("iptables-linear", top)]])
    out.append("At N = {:,}: microseg {:.0f} connections/s, iptables-linear {:.0f}: "
               "{:.2f}x.".format(top, ms, ipt, ms / ipt if ipt else 0))
    return "\n\n".join(out)


def plot(samples, counts, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib missing: no plot")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    none = statistics.median([s["conn_per_s"] for s in samples[("none", 0)]])
    ax.plot(counts, [none] * len(counts), "k--", label="none")
    for name in CONTENDERS:
        ax.plot(counts, [statistics.median([s["conn_per_s"] for s in samples[(name, c)]])
                         for c in counts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("rules in the policy (N)")
    ax.set_ylabel("short connections per second")
    ax.set_title("Connection rate against policy size (median of rounds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="1 round, N = 10 and 1,000")
    args = parser.parse_args()
    counts = [10, 1000] if args.quick else [10, 1000, 10000]
    rounds = 1 if args.quick else args.rounds
    started = time.time()
    processes = []
    contenders = {}
    samples = {("none", 0): []}
    try:
        build()
        processes = start_servers()
        for contender in (NoFilter, Microseg, NftLinear, NftSets, IptablesLinear):
            contenders[contender.name] = contender()
        for rnd in range(rounds):
            say("round %d/%d: none" % (rnd + 1, rounds))
            samples[("none", 0)].append(measure(args.seconds))
            for count in counts:
                for name in CONTENDERS:
                    contender = contenders[name]
                    loading = time.time()
                    contender.apply(count)
                    ok, closed = enforced()
                    if ok != "ok" or closed != "fail":
                        raise RuntimeError("%s with N=%d does not enforce the policy: allowed "
                                           "port %s, other port %s" % (name, count, ok, closed))
                    say("round %d/%d: %s N=%d (loaded in %.1f s)"
                        % (rnd + 1, rounds, name, count, time.time() - loading))
                    samples.setdefault((name, count), []).append(measure(args.seconds))
                    contender.clear()
    finally:
        for contender in contenders.values():
            getattr(contender, "close", contender.clear)()
        teardown(processes)
    text = report(samples, counts)
    png = os.path.join(HERE, "traffic.png")
    plotted = plot(samples, counts, png)
    method = ("Two namespaces on one bridge, {} round(s), contenders alternating within each "
              "round; {:.0f} s iperf3 and connection-rate runs, 3,000 round trips for latency; "
              "\"vs none\" is the median of per-round ratios (latency: ratio of medians). "
              "Every contender was checked to pass the allowed port and drop another before "
              "being measured. Total {:.0f} s.{}".format(
                  rounds, args.seconds, time.time() - started,
                  " Plot: bench/traffic.png." if plotted else ""))
    with open(os.path.join(HERE, "traffic.md"), "w") as handle:
        handle.write(text + "\n\n" + method + "\n")
    with open(os.path.join(HERE, "traffic.json"), "w") as handle:
        json.dump(dict(("%s/%d" % key, value) for key, value in samples.items()), handle,
                  indent=1)
    print(text + "\n\n" + method)


if __name__ == "__main__":
    main()

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container namespaces on a bridge, and real TCP/UDP/ICMP probes between them.

Everything lives in 198.18.0.0/15 and is removed by Lab.destroy(); processes are stopped
by pid.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import signal
import subprocess
import sys
import time
import uuid

from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netprobe.py")


def sh(*args, **kw):
    return subprocess.run(list(args), check=kw.pop("check", True), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kw)


def stop_processes(processes):
    """Stop each process by its pid: SIGTERM, then SIGKILL after 5 s; close its stdout."""
    for proc in processes:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def ifindex(name):
    """The ifindex of a link of this network namespace."""
    with open("/sys/class/net/%s/ifindex" % name) as handle:
        return int(handle.read())


def _no_ipv6(ifname):
    sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % ifname, check=False)


class Container:
    def __init__(self, lab, name, address):
        self.lab = lab
        self.name = name
        self.netns = "%s-%s" % (lab.tag, name)
        self.address = address
        self.host_if = "%s%s" % (lab.tag, name)[:15]
        self.processes = []

    def run(self, *args, **kw):
        return sh("ip", "netns", "exec", self.netns, *args, **kw)

    def probe(self, *args, **kw):
        result = self.run(sys.executable, PROBE, *[str(a) for a in args], check=False, **kw)
        return result.stdout.strip()

    def serve(self, proto, port):
        """Start an echo server; returns once it listens."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, PROBE,
                                 "serve", proto, str(port)], stdout=subprocess.PIPE,
                                universal_newlines=True)
        line = proc.stdout.readline().strip()
        if line != "listening":
            proc.kill()
            raise RuntimeError("server in %s did not start: %r" % (self.netns, line))
        self.processes.append(proc)
        return proc

    def stop_processes(self):
        stop_processes(self.processes)
        self.processes = []


class Lab:
    """A bridge in the root namespace with one veth per container namespace."""

    def __init__(self, subnet="198.18.100", names=("a", "b", "c")):
        self.tag = "ms" + uuid.uuid4().hex[:5]
        self.bridge = self.tag + "br"
        self.containers = {}
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            _no_ipv6(self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            for i, name in enumerate(names):
                self._add(name, "%s.%d" % (subnet, 10 + 10 * i))
        except Exception:
            self.destroy()
            raise

    def _add(self, name, address):
        ctr = Container(self, name, address)
        self.containers[name] = ctr
        sh("ip", "netns", "add", ctr.netns)
        sh("ip", "link", "add", ctr.host_if, "type", "veth", "peer", "name", "eth0",
           "netns", ctr.netns)
        sh("ip", "link", "set", ctr.host_if, "master", self.bridge)
        # IPv4-only lab: IPv6 neighbour chatter would be dropped (ipv6: drop) and blur
        # the counters the tests read.
        _no_ipv6(ctr.host_if)
        ctr.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        ctr.run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "link", "set", ctr.host_if, "up")
        ctr.run("ip", "addr", "add", address + "/24", "dev", "eth0")
        ctr.run("ip", "link", "set", "eth0", "up")
        ctr.run("ip", "link", "set", "lo", "up")

    def __getitem__(self, name):
        return self.containers[name]

    def destroy(self, pin_path=None):
        """Remove everything; with pin_path also our filters and that pin directory."""
        if pin_path:
            self._detach_programs()
            _loader.remove_pins(pin_path)
        for ctr in self.containers.values():
            ctr.stop_processes()
            sh("ip", "link", "del", ctr.host_if, check=False)
            sh("ip", "netns", "del", ctr.netns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def attach(self, fds, pin_path):
        """Put a compiled datapath's programs (Datapath.fds) on both hooks of every port,
        named for the pin directory of their instance, as microseg_program names them."""
        ipr = _netlink.open_route()
        try:
            for ctr in self.containers.values():
                index = ipr.link_lookup(ifname=ctr.host_if)[0]
                _netlink.add_clsact(ipr, index)
                for hook in ("ingress", "egress"):
                    function = _loader.HOOK_PROGRAM[hook]
                    _netlink.attach(ipr, index, hook, fds[function],
                                    _netlink.filter_name(function, pin_path))
        finally:
            ipr.close()

    def _detach_programs(self):
        ipr = _netlink.open_route()
        try:
            for ctr in self.containers.values():
                index = ipr.link_lookup(ifname=ctr.host_if)
                for hook in ("ingress", "egress"):
                    if index and _netlink.our_filter(ipr, index[0], hook):
                        _netlink.detach(ipr, index[0], hook)
        finally:
            ipr.close()

    def wait_links(self, timeout=5.0):
        """Bridge ports go through listening/learning; wait until forwarding."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = sh("bridge", "link", "show").stdout
            ours = [line for line in states.splitlines() if self.bridge in line]
            if ours and all("forwarding" in line for line in ours):
                return
            time.sleep(0.1)

#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet of container hosts on this one machine, reachable over real SSH (docs/architecture.md section 5).

Host i is a network namespace msl-h<i> with its own mount namespace, in which it has its
own bpffs at /sys/fs/bpf and private tmpfs at /run/netns, /run/lock and /run/microseg,
and runs its own sshd on 198.18.0.<10+i>, joined to the management bridge mslab0
(198.18.0.1/24). Its containers (made later by the bridge_veth role) live on 198.18.<10+i>.0/24;
every host routes the other hosts' container subnets over the management network.

  fleet.py up [--hosts N]           build (idempotent; a larger N adds hosts), write inventory
  fleet.py down                     stop every process of the fleet by pid, remove it all
  fleet.py status                   one line per host
  fleet.py exec HOST [--container NAME] -- CMD...   run in a host (or one of its containers)
  fleet.py pids [--all]             "HOST SSHD_PID" per running host (--all: every pid in it)

--state-dir and --inventory move the state (keys, sshd configs, pids) and the inventory,
e.g. for a test's private fleet; the names (mslab0, msl-h<i>, mslh<i>) and addresses are
fixed, so only one fleet can run at a time.

From Python (tests, demo):  fleet = Fleet(state_dir); fleet.up(2);
  fleet.exec("h2", ["ip", "-br", "addr"], container="web")  -> CompletedProcess
  fleet.command("h2", argv, container=None)                 -> argv for subprocess.Popen
  fleet.down()

Only 198.18.0.0/15 addresses; nothing outside the names above is touched.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MGMT_BRIDGE = "mslab0"
MGMT_ADDRESS = "198.18.0.1/24"
# Fixed, locally administered: a bridge without one takes its lowest port MAC and changes it
# when that port goes, so hosts' ARP entries go stale and, at `down`, the closing sshd
# sessions' FINs never reach the root namespace (ssh ControlMaster processes would linger).
MGMT_MAC = "02:00:c6:12:00:01"
CONTAINERS = (("web", 10), ("db", 20), ("other", 30))
CONTAINER_BRIDGE = "msbr0"
MAX_HOSTS = 200

# Runs inside the host's fresh network + mount namespace, then becomes sshd (same pid).
HOST_INIT = """set -e
mount --make-rprivate /
mount -t bpf bpf /sys/fs/bpf
mkdir -p /run/netns /run/lock /run/microseg /run/sshd
mount -t tmpfs -o mode=0755 tmpfs /run/netns
mount -t tmpfs -o mode=1777 tmpfs /run/lock
mount -t tmpfs -o mode=0755 tmpfs /run/microseg
exec /usr/sbin/sshd -D -e -f "$1"
"""

SSHD_CONFIG = """ListenAddress {address}
HostKey {host_key}
PidFile {state}/sshd.pid
PermitRootLogin prohibit-password
# The fleet's key for root; an ordinary user a test adds inside a host (to run with become)
# brings its own in its home, since sshd reads the file as that user.
AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 200
MaxSessions 200
Subsystem sftp internal-sftp
"""


def sh(*argv, **kw):
    check = kw.pop("check", True)
    return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=check, **kw)


def say(text):
    sys.stderr.write("fleet: %s\n" % text)
    sys.stderr.flush()


class Host:

    def __init__(self, fleet, index):
        self.fleet = fleet
        self.index = index
        self.name = "h%d" % index
        self.netns = "msl-h%d" % index
        self.link = "mslh%d" % index
        self.address = "198.18.0.%d" % (10 + index)
        self.subnet = "198.18.%d" % (10 + index)
        self.state = os.path.join(fleet.state_dir, self.name)

    @property
    def pid(self):
        """The sshd pid (also the pid that created the host's mount namespace), if alive."""
        try:
            with open(os.path.join(self.state, "pid")) as handle:
                pid = int(handle.read().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if b"sshd" not in handle.read():
                    return None   # starting up, a zombie or a recycled pid
        except OSError:
            return None
        return pid

    def exists(self):
        return os.path.exists("/run/netns/" + self.netns)

    def create(self):
        os.makedirs(self.state, exist_ok=True)
        if not self.exists():
            sh("ip", "netns", "add", self.netns)
        if sh("ip", "link", "show", self.link, check=False).returncode:
            sh("ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0",
               "netns", self.netns)
        sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % self.link)
        sh("ip", "link", "set", self.link, "master", MGMT_BRIDGE, "up")
        inside = ["ip", "netns", "exec", self.netns]
        sh(*(inside + ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))
        sh(*(inside + ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]))
        sh(*(inside + ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        sh("ip", "-n", self.netns, "addr", "replace", self.address + "/24", "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def route_to(self, others):
        for other in others:
            if other.index != self.index:
                sh("ip", "-n", self.netns, "route", "replace", other.subnet + ".0/24",
                   "via", other.address)

    def start_sshd(self):
        if self.pid:
            return False
        host_key = os.path.join(self.state, "ssh_host_ed25519_key")
        if not os.path.exists(host_key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key)
        config = os.path.join(self.state, "sshd_config")
        with open(config, "w") as handle:
            handle.write(SSHD_CONFIG.format(address=self.address, host_key=host_key,
                                            state=self.state,
                                            authorized_keys=self.fleet.authorized_keys))
        log = open(os.path.join(self.state, "sshd.log"), "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
             "private", "--", "/bin/sh", "-c", HOST_INIT, "host-init", config],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        with open(os.path.join(self.state, "pid"), "w") as handle:
            handle.write("%d\n" % proc.pid)
        return True

    def wait_ssh(self, timeout=20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            res = sh("ssh", "-i", self.fleet.key, "-o", "BatchMode=yes",
                     "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR",
                     "root@" + self.address, "true", check=False)
            if res.returncode == 0:
                return
            time.sleep(0.2)
        raise SystemExit("fleet: %s: sshd on %s does not answer; see %s/sshd.log"
                         % (self.name, self.address, self.state))

    def enter(self, argv, container=None):
        """argv to run argv inside this host (or one of its containers)."""
        pid = self.pid
        if not pid:
            raise SystemExit("fleet: %s is not running" % self.name)
        # setns() into a mount namespace moves the cwd to its root: keep the caller's
        # (the host shares this machine's filesystem apart from its private mounts).
        prefix = ["nsenter", "-t", str(pid), "-m", "-n", "--wd=" + _cwd(), "--"]
        if container:
            prefix += ["ip", "netns", "exec", container]
        return prefix + list(argv)

    def processes(self):
        """Every pid living in this host, found from the root namespace through /proc:

        - in the host's network namespace;
        - in a mount namespace that holds the host's private /run/netns tmpfs: the host's
          own, and the copies that `ip netns exec` makes inside it (so also processes in a
          container namespace that was deleted while they ran);
        - in one of the host's containers' network namespaces (named in that /run/netns).
        """
        table = _namespaces()
        host_net = _ns_inode("/run/netns/" + self.netns) if self.exists() else None
        members = set(p for p, entry in table.items() if entry[0] == host_net)
        own_dev = table.get(os.getpid(), (None, None, None))[2]
        devs, container_nets = set(), set()
        for anchor in sorted(members | set([self.pid] if self.pid else [])):
            dev = table.get(anchor, (None, None, None))[2]
            if dev is None or dev == own_dev or dev in devs:
                continue
            names = _listdir("/proc/%d/root/run/netns" % anchor)
            if names is None or any(n.startswith("msl-h") for n in names):
                continue   # not the host's private /run/netns
            devs.add(dev)
            for name in names:
                inode = _ns_inode("/proc/%d/root/run/netns/%s" % (anchor, name))
                if inode is not None and inode != host_net:
                    container_nets.add(inode)
        pids = set(p for p, (net, unused, dev) in table.items()
                   if net == host_net or dev in devs or net in container_nets)
        pids.discard(os.getpid())
        return pids

    def destroy(self):
        victims = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + 3
            while time.time() < deadline and any(_alive(p) for p in victims):
                time.sleep(0.05)
            victims = set(p for p in victims if _alive(p))
            if not victims:
                break
        sh("ip", "link", "del", self.link, check=False)
        if self.exists():
            sh("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.state, ignore_errors=True)


def _ns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return None


def _netns_names():
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names():
    out = sh("ip", "-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.count(":") >= 2]


def _namespaces():
    """{pid: (net namespace inode, mount namespace inode, device of its /run/netns)}."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            net = _ns_inode("/proc/%s/ns/net" % entry)
            mnt = _ns_inode("/proc/%s/ns/mnt" % entry)
            try:
                dev = os.stat("/proc/%s/root/run/netns" % entry).st_dev
            except OSError:
                dev = None
            if net is not None and mnt is not None:
                table[int(entry)] = (net, mnt, dev)
    return table


def _cwd():
    try:
        return os.getcwd()
    except OSError:
        return "/"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Fleet:

    def __init__(self, state_dir=None, inventory=None):
        self.state_dir = os.path.abspath(state_dir or os.path.join(HERE, ".state"))
        self.inventory = os.path.abspath(inventory or os.path.join(HERE, "inventory", "hosts.yml"))
        self.key = os.path.join(self.state_dir, "id_ed25519")
        self.authorized_keys = os.path.join(self.state_dir, "authorized_keys")

    def hosts(self):
        """The hosts that have state, by index."""
        if not os.path.isdir(self.state_dir):
            return []
        found = []
        for entry in os.listdir(self.state_dir):
            if entry.startswith("h") and entry[1:].isdigit():
                found.append(Host(self, int(entry[1:])))
        return sorted(found, key=lambda h: h.index)

    def host(self, name):
        if not (name.startswith("h") and name[1:].isdigit()):
            raise SystemExit("fleet: no host %r (hosts are h1, h2, ...)" % name)
        return Host(self, int(name[1:]))

    def command(self, host, argv, container=None):
        """argv that runs `argv` in host (name like "h2") or in one of its containers."""
        return self.host(host).enter(argv, container)

    def exec(self, host, argv, container=None, check=False, timeout=None, **kw):
        """Run argv in host (or its container) from the root namespace; output captured."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("universal_newlines", True)
        return subprocess.run(self.command(host, argv, container), check=check,
                              timeout=timeout, **kw)

    def pids(self, every=False):
        """{host name: [sshd pid]} for running hosts; every=True: every pid in each host."""
        out = {}
        for host in self.hosts():
            pid = host.pid
            if pid:
                out[host.name] = sorted(host.processes()) if every else [pid]
        return out

    def up(self, count):
        if not 1 <= count <= MAX_HOSTS:
            raise SystemExit("fleet: --hosts must be 1..%d" % MAX_HOSTS)
        started = time.time()
        os.makedirs(self.state_dir, exist_ok=True)
        if not os.path.exists(self.key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "microseg-lab", "-f", self.key)
        shutil.copyfile(self.key + ".pub", self.authorized_keys)
        if sh("ip", "link", "show", MGMT_BRIDGE, check=False).returncode:
            sh("ip", "link", "add", MGMT_BRIDGE, "address", MGMT_MAC, "type", "bridge")
        sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % MGMT_BRIDGE)
        sh("ip", "link", "set", MGMT_BRIDGE, "address", MGMT_MAC)
        sh("ip", "addr", "replace", MGMT_ADDRESS, "dev", MGMT_BRIDGE)
        sh("ip", "link", "set", MGMT_BRIDGE, "up")
        wanted = [Host(self, i) for i in range(1, count + 1)]
        known = dict((h.index, h) for h in self.hosts())
        known.update((h.index, h) for h in wanted)
        everyone = [known[i] for i in sorted(known)]
        fresh = []
        for host in wanted:
            host.create()
            if host.start_sshd():
                fresh.append(host)
        for host in everyone:
            host.route_to(everyone)
        for host in fresh:
            host.wait_ssh()
            say("%s up: %s (netns %s, sshd pid %s)"
                % (host.name, host.address, host.netns, host.pid))
        self.write_inventory(everyone)
        say("%d hosts up (%d new) in %.1f s; inventory %s"
            % (len(everyone), len(fresh), time.time() - started, self.inventory))

    def down(self):
        started = time.time()
        hosts = self.hosts()
        # Also hosts whose state directory is gone (names are fixed: msl-h<i>, mslh<i>).
        known = set(h.index for h in hosts)
        for name in _netns_names() + _link_names():
            for prefix in ("msl-h", "mslh"):
                if name.startswith(prefix) and name[len(prefix):].isdigit() \
                        and int(name[len(prefix):]) not in known:
                    known.add(int(name[len(prefix):]))
                    hosts.append(Host(self, int(name[len(prefix):])))
        for host in hosts:
            host.destroy()
            say("%s down" % host.name)
        sh("ip", "link", "del", MGMT_BRIDGE, check=False)
        if os.path.exists(self.inventory):
            os.unlink(self.inventory)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        say("%d hosts removed in %.1f s" % (len(hosts), time.time() - started))

    def status(self):
        for host in self.hosts():
            pid = host.pid
            print("%-4s %-5s %-14s netns %-9s sshd pid %s"
                  % (host.name, "up" if pid else "down", host.address, host.netns, pid or "-"))

    def host_vars(self, host):
        return {
            "ansible_host": host.address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": self.key,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                                       " -o ControlMaster=auto -o ControlPersist=60s"
                                       " -o LogLevel=ERROR",
            "ansible_python_interpreter": "/usr/bin/python3",
            "lab_index": host.index,
            "bridge_veth_bridges": [{"name": CONTAINER_BRIDGE, "address": host.subnet + ".1/24"}],
            "bridge_veth_containers": [
                {"name": name, "bridge": CONTAINER_BRIDGE,
                 "address": "%s.%d/24" % (host.subnet, last), "gateway": host.subnet + ".1"}
                for name, last in CONTAINERS],
        }

    def write_inventory(self, hosts):
        os.makedirs(os.path.dirname(self.inventory), exist_ok=True)
        data = {"microseg_hosts": {"hosts": dict((h.name, self.host_vars(h)) for h in hosts)}}
        tmp = self.inventory + ".tmp"
        with open(tmp, "w") as handle:
            handle.write("# Written by lab/fleet.py up; removed by lab/fleet.py down.\n")
            json.dump(data, handle, indent=2, sort_keys=True)   # JSON is YAML
            handle.write("\n")
        os.rename(tmp, self.inventory)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="default: lab/.state")
    parser.add_argument("--inventory", help="default: lab/inventory/hosts.yml")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--hosts", type=int, default=3)
    sub.add_parser("down")
    sub.add_parser("status")
    pids = sub.add_parser("pids")
    pids.add_argument("--all", action="store_true", help="every process in each host")
    run = sub.add_parser("exec")
    run.add_argument("host")
    run.add_argument("--container")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = []
    if "--" in argv:
        command = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("fleet: run as root (namespaces, bridges, sshd)")
    fleet = Fleet(args.state_dir, args.inventory)
    if args.command == "up":
        fleet.up(args.hosts)
    elif args.command == "down":
        fleet.down()
    elif args.command == "status":
        fleet.status()
    elif args.command == "pids":
        for name, found in sorted(fleet.pids(args.all).items(), key=lambda kv: int(kv[0][1:])):
            print("%s %s" % (name, " ".join(str(p) for p in found)))
    else:
        if not command:
            raise SystemExit("fleet: exec needs a command after --")
        argv_full = fleet.host(args.host).enter(command, args.container)
        os.execvp(argv_full[0], argv_full)
    return 0


if __name__ == "__main__":
    sys.exit(main())

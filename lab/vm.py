#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container hosts that are real machines: qemu guests with their own kernel, systemd and
podman (docs/architecture.md section 5), the VM counterpart of lab/fleet.py.

  vm.py image                      build the guest image (or say where the cached one is)
  vm.py up [--hosts N]             build/boot N guests, start their podman containers,
                                   write lab/inventory-vm/hosts.yml
  vm.py down                       stop every qemu by pid, remove overlays, state, inventory
  vm.py status                     one line per guest
  vm.py exec HOST [--container NAME] -- CMD...   run in a guest (or a podman container) by SSH
  vm.py reboot HOST [--kernel R]   reboot a guest (into its installed kernel R) and wait
  vm.py console HOST [--lines N]   the guest's serial console log

The image: Debian bookworm made by debootstrap from the host's Debian mirror with systemd,
openssh-server, python3, podman, netavark, iptables and the distribution kernel, plus a second,
newer kernel from the suite's security updates without its headers (vm_second_kernel in the
inventory; `reboot --kernel` boots it, the kernel-upgrade test). It does NOT
hold BCC, pyroute2, netaddr or kernel headers: the role installs those (its real package path);
their .debs wait in the image's apt cache so that the install needs no network, though the guest
reaches the mirror through qemu's user network too. The image is cached under --cache
(default $MICROSEG_VM_CACHE or /var/cache/ebpf-microseg/vm), keyed by everything it is built
from, and never modified: each guest boots a qcow2 overlay made fresh by `up`.

Guests: KVM when /dev/kvm starts a vCPU (probed, the answer cached per host boot), TCG
otherwise. Guest i has user-net 198.18.100.0/24 of its own (qemu's default 10.0.2.0/24 is not
allowed here), SSH forwarded from 127.0.0.1 only, its serial console in
<state>/vm<i>/console.log, and a podman network `msnet` (198.18.<120+i>.0/24, on the bridge
podman names, written to the inventory as microseg_bridge) with containers web, db and other. The containers are made from a local root (no registry):
the guest's /usr mounted read-only, so they run the guest's python3 echo servers
(tcp/5432, tcp/80, udp/53 from tests/harness/netprobe.py).

Every address is in 198.18.0.0/15; nothing outside the state and cache directories and the
qemu processes it started (by pid) is touched.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NETPROBE = os.path.join(ROOT, "tests", "harness", "netprobe.py")

SUITE = "bookworm"
IMAGE_SIZE = "6G"
# What the guests are made of. The key of the cached image is a hash of these lists, the
# suite, the mirror and the files below, so changing any of them builds a new image.
IMAGE_PACKAGES = [
    "systemd-sysv", "udev", "dbus", "openssh-server", "python3", "python3-apt", "iproute2",
    "podman", "netavark", "aardvark-dns", "iptables", "nftables", "linux-image-amd64",
    "initramfs-tools", "kmod", "procps", "sudo", "ca-certificates", "apt-utils", "less",
    # What BCC and the headers pull in (LLVM/clang libraries, gcc, kbuild): under TCG their
    # unpacking alone takes minutes, and the role's install path runs the same without them.
    "libbpfcc", "linux-kbuild-6.1", "linux-compiler-gcc-12-x86",
]
# Downloaded into the image's apt cache, not installed: the role's package tasks install them.
ROLE_PACKAGES = ["python3-bpfcc", "python3-pyroute2", "python3-netaddr", "linux-headers-amd64"]
USER_NET = "198.18.100"            # every guest's own user-net (qemu's slirp), never routed
CONTAINER_NET = 198                # container subnets 198.18.<120+i>.0/24
CONTAINERS = (("web", 10), ("db", 20), ("other", 30))
SERVICES = (("tcp", 5432), ("tcp", 80), ("udp", 53))
PODMAN_NETWORK = "msnet"
MAX_HOSTS = 4
GUEST_MEMORY_MB = 2048
SSH_PORT_BASE = 22200
BOOT_TIMEOUT = 420

NETWORK_UNIT = """[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

# One-time setup inside the image root (chroot), after debootstrap.
CONFIGURE = r"""set -eu
export DEBIAN_FRONTEND=noninteractive
echo microseg-vm > /etc/hostname
printf '127.0.0.1 localhost\n' > /etc/hosts
printf '/dev/vda / ext4 defaults,noatime 0 1\n' > /etc/fstab
printf 'nameserver %(user_net)s.3\n' > /etc/resolv.conf
mkdir -p /root/.ssh /etc/systemd/network
chmod 0700 /root/.ssh
ln -sf /lib/systemd/system/systemd-networkd.service \
  /etc/systemd/system/multi-user.target.wants/systemd-networkd.service
# dpkg in an emulated CPU: skip the man-db rebuild, never let apt's timers take the lock
# while the role installs packages.
echo 'man-db man-db/auto-update boolean false' | debconf-set-selections
# A throwaway guest on a qcow2 overlay: dpkg's fsync per file buys nothing here.
echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/microseg-lab-unsafe-io
rm -f /var/lib/man-db/auto-update
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null /etc/systemd/system/$unit
done
# Same host keys in every guest of one image is fine for a lab, but not for anything else:
# drop them, and make fresh ones at first boot.
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/ms-hostkeys.service <<'EOF'
[Unit]
Description=Generate SSH host keys at first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/ms-hostkeys.service \
  /etc/systemd/system/multi-user.target.wants/ms-hostkeys.service
printf 'UseDNS no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n' \
  > /etc/ssh/sshd_config.d/microseg-lab.conf
apt-get clean                  # debootstrap's own .debs: 250 MB nobody installs again
# A second kernel, newer than the one the guests boot, as a security update brings it: the
# kernel-upgrade scenario boots it (vm.py reboot --kernel) with no headers of its own, so
# the boot restore has to find the fallback. The suite is only enabled for this install:
# the role's linux-headers-amd64 must stay the booted kernel's.
mkdir -p /etc/microseg-lab
default=$(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
echo "deb %(security)s %(suite)s-security main" > /etc/apt/sources.list.d/ms-second-kernel.list
apt-get update -qq
second=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-amd64$' | cut -d' ' -f1 |
         sed 's/^linux-image-//' | grep -vx "$default" | sort -V | tail -1)
[ -n "$second" ] || { echo "no second kernel in %(suite)s-security" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "linux-image-$second" >/dev/null
rm /etc/apt/sources.list.d/ms-second-kernel.list
printf 'default=%%s\nsecond=%%s\n' "$default" "$second" > /etc/microseg-lab/kernels
apt-get clean
apt-get update -qq
apt-get install -y -qq --download-only %(role_packages)s >/dev/null
# The containers' root: the guest's /usr, read-only, under the usual merged-/usr links.
for name in %(containers)s; do
  mkdir -p /srv/ms/containers/$name/etc /srv/ms/containers/$name/tmp \
           /srv/ms/containers/$name/usr /srv/ms/containers/$name/proc \
           /srv/ms/containers/$name/sys /srv/ms/containers/$name/dev
  for link in bin sbin lib lib64; do ln -sfn usr/$link /srv/ms/containers/$name/$link; done
  echo "root:x:0:0:root:/:/bin/sh" > /srv/ms/containers/$name/etc/passwd
  echo "root:x:0:" > /srv/ms/containers/$name/etc/group
done
"""

# Inside a guest at `up`: the podman network and the containers, each serving SERVICES.
CONTAINERS_UP = r"""set -eu
if ! podman network exists %(network)s; then
  podman network create --disable-dns --subnet %(subnet)s.0/24 --gateway %(subnet)s.1 \
    %(network)s >/dev/null
fi
for spec in %(containers)s; do
  name=${spec%%%%=*}; address=${spec#*=}
  if [ "$(podman inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ]; then
    continue
  fi
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman run -d --restart=always --cap-add NET_RAW --name "$name" --hostname "$name" \
    --network %(network)s \
    --ip "$address" \
    -v /usr:/usr:ro -v /srv/ms/netprobe.py:/netprobe.py:ro --rootfs /srv/ms/containers/$name \
    /usr/bin/python3 /netprobe.py serve-all %(services)s >/dev/null
done
echo "bridge $(podman network inspect -f '{{.NetworkInterface}}' %(network)s)"
podman ps --format '{{.Names}} {{.Status}}'
"""


def say(text):
    sys.stderr.write("vm: %s\n" % text)
    sys.stderr.flush()


def sh(*argv, **kw):
    check = kw.pop("check", True)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(list(argv), universal_newlines=True, check=check, **kw)


def _host_apt_uris():
    """The archive URIs of this machine's apt sources, in order (deb822 or one-line)."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        for line in text.splitlines():
            words = [w for w in line.split() if not w.startswith("[")]   # [options]
            if words[:1] in (["URIs:"], ["deb"]) and len(words) > 1:
                yield words[1]


def host_mirror():
    """The Debian mirror this machine's apt uses."""
    return next((uri for uri in _host_apt_uris() if "security" not in uri),
                "http://deb.debian.org/debian")


def host_security_mirror():
    """Where this machine's apt gets Debian security updates."""
    return next((uri for uri in _host_apt_uris() if "security" in uri),
                "http://deb.debian.org/debian-security")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _free_port(start):
    port = start
    while port < start + 1000:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                port += 1
    raise SystemExit("vm: no free local port from %d" % start)


class Image:
    """The cached guest image: base.raw (ext4 root), vmlinuz, initrd.img, manifest.json."""

    def __init__(self, cache_dir, mirror=None):
        self.mirror = mirror or host_mirror()
        self.security_mirror = host_security_mirror()
        self.cache_dir = os.path.abspath(cache_dir)
        self.key = self._key()
        self.dir = os.path.join(self.cache_dir, "%s-%s" % (SUITE, self.key))
        self.raw = os.path.join(self.dir, "base.raw")
        self.kernel = os.path.join(self.dir, "vmlinuz")
        self.initrd = os.path.join(self.dir, "initrd.img")
        self.manifest = os.path.join(self.dir, "manifest.json")
        self.ssh_key = os.path.join(self.dir, "id_ed25519")

    def _key(self):
        digest = hashlib.sha256()
        for part in [SUITE, self.mirror, self.security_mirror, IMAGE_SIZE, USER_NET] + \
                IMAGE_PACKAGES + ["|"] + \
                ROLE_PACKAGES + [CONFIGURE, NETWORK_UNIT]:
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()[:12]

    def ready(self):
        return all(os.path.exists(p) for p in (self.raw, self.kernel, self.initrd, self.manifest,
                                               self.ssh_key))

    def info(self):
        with open(self.manifest) as handle:
            return json.load(handle)

    def build(self):
        """Build the image unless the cache holds it; returns the seconds spent (0 if cached)."""
        if self.ready():
            say("image cached: %s (built in %.0f s on %s)"
                % (self.dir, self.info()["build_seconds"], self.info()["built_at"]))
            return 0.0
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "ssh-keygen"):
            if not shutil.which(tool):
                raise SystemExit("vm: %s is missing (make deps installs it)" % tool)
        started = time.time()
        os.makedirs(self.cache_dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="build-", dir=self.cache_dir)
        root = os.path.join(work, "root")
        try:
            say("building the %s image from %s into %s (about 3 min)"
                % (SUITE, self.mirror, self.dir))
            log_path = os.path.join(work, "debootstrap.log")
            with open(log_path, "w") as log:
                step = time.time()
                rc = subprocess.run(
                    ["debootstrap", "--variant=minbase", "--include=" + ",".join(IMAGE_PACKAGES),
                     SUITE, root, self.mirror], stdout=log, stderr=subprocess.STDOUT,
                    check=False).returncode
            if rc:
                with open(log_path) as log:
                    tail = log.read()[-3000:]
                raise SystemExit("vm: debootstrap failed (rc %d):\n%s" % (rc, tail))
            say("debootstrap done in %.0f s" % (time.time() - step))
            step = time.time()
            network_dir = os.path.join(root, "etc/systemd/network")
            os.makedirs(network_dir, exist_ok=True)
            with open(os.path.join(network_dir, "10-user-net.network"), "w") as handle:
                handle.write(NETWORK_UNIT)
            self._configure(root, work)
            say("configured in %.0f s" % (time.time() - step))
            step = time.time()
            staged = os.path.join(work, "base.raw")
            sh("mkfs.ext4", "-q", "-F", "-L", "msroot", "-d", root, staged, IMAGE_SIZE)
            kernels = _read_kernels(root)
            kernel_release = kernels["default"]
            for name in ("vmlinuz", "initrd.img"):
                shutil.copyfile(os.path.join(root, "boot", "%s-%s" % (name, kernel_release)),
                                os.path.join(work, name))
            say("filesystem image in %.0f s" % (time.time() - step))
            manifest = {
                "suite": SUITE, "mirror": self.mirror, "key": self.key,
                "packages": IMAGE_PACKAGES, "role_packages_cached": ROLE_PACKAGES,
                "kernel": kernel_release, "second_kernel": kernels["second"],
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.time() - started, 1),
            }
            with open(os.path.join(work, "manifest.json"), "w") as handle:
                json.dump(manifest, handle, indent=2)
            shutil.rmtree(root)
            os.makedirs(self.dir, exist_ok=True)
            for name in ("id_ed25519", "id_ed25519.pub", "vmlinuz", "initrd.img", "base.raw",
                         "manifest.json"):   # manifest last: it marks the image complete
                os.replace(os.path.join(work, name), os.path.join(self.dir, name))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.time() - started
        say("image built in %.0f s: %s" % (seconds, self.dir))
        return seconds

    def _configure(self, root, work):
        key = os.path.join(work, "id_ed25519")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "microseg-vm", "-f", key)
        script = CONFIGURE % {"user_net": USER_NET, "role_packages": " ".join(ROLE_PACKAGES),
                              "suite": SUITE, "security": self.security_mirror,
                              "containers": " ".join(name for name, _last in CONTAINERS)}
        # chroot needs /proc and /dev for apt and the ssh host key removal is harmless.
        mounts = []
        try:
            for fs, target, opts in (("proc", "proc", []), ("sysfs", "sys", []),
                                     ("devtmpfs", "dev", [])):
                path = os.path.join(root, target)
                sh("mount", "-t", fs, fs, path, *opts)
                mounts.append(path)
            with open(os.path.join(work, "configure.log"), "w") as log:
                rc = subprocess.run(["chroot", root, "/bin/sh", "-c", script],
                                    stdout=log, stderr=subprocess.STDOUT, check=False).returncode
            if rc:
                with open(os.path.join(work, "configure.log")) as log:
                    raise SystemExit("vm: configuring the image failed:\n" + log.read()[-3000:])
        finally:
            for path in reversed(mounts):
                sh("umount", "-l", path, check=False)
        with open(key + ".pub") as handle:
            public = handle.read()
        with open(os.path.join(root, "root/.ssh/authorized_keys"), "w") as handle:
            handle.write(public)
        os.chmod(os.path.join(root, "root/.ssh/authorized_keys"), 0o600)


def _read_kernels(root):
    """The image's kernels as CONFIGURE recorded them: {"default": release, "second": ...}."""
    with open(os.path.join(root, "etc/microseg-lab/kernels")) as handle:
        kernels = dict(line.strip().split("=", 1) for line in handle if "=" in line)
    for role in ("default", "second"):
        for name in ("vmlinuz", "initrd.img"):
            if not os.path.exists(os.path.join(root, "boot", "%s-%s" % (name, kernels[role]))):
                raise SystemExit("vm: no /boot/%s-%s in the image" % (name, kernels[role]))
    return kernels


def probe_kvm(image, cache_dir):
    """"kvm" when a KVM guest prints its first console line within 15 s, else "tcg".

    /dev/kvm can exist while its vCPUs never run (nested setups); the answer is kept per
    host boot, since it does not change before the next one."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot_id = handle.read().strip()
    except OSError:
        boot_id = "unknown"
    memo = os.path.join(cache_dir, "accel-" + boot_id)
    try:
        with open(memo) as handle:
            return handle.read().strip()
    except OSError:
        pass
    say("probing KVM (15 s at most)")
    console = tempfile.NamedTemporaryFile(prefix="kvm-probe-", suffix=".log", delete=False)
    console.close()
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none",
         "-no-reboot", "-kernel", image.kernel, "-append", "console=ttyS0 panic=-1",
         "-serial", "file:" + console.name, "-monitor", "none", "-nodefaults"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    accel = "tcg"
    deadline = time.time() + 15
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.getsize(console.name) > 0:
                accel = "kvm"
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.unlink(console.name)
    with open(memo, "w") as handle:
        handle.write(accel)
    return accel


class Guest:

    def __init__(self, lab, index):
        self.lab = lab
        self.index = index
        self.name = "vm%d" % index
        self.state = os.path.join(lab.state_dir, self.name)
        self.overlay = os.path.join(self.state, "disk.qcow2")
        self.console = os.path.join(self.state, "console.log")
        self.pid_file = os.path.join(self.state, "qemu.pid")
        self.port_file = os.path.join(self.state, "ssh-port")
        self.bridge_file = os.path.join(self.state, "bridge")
        self.accel_file = os.path.join(self.state, "accel")
        self.subnet = "198.18.%d" % (120 + index)

    @property
    def pid(self):
        try:
            with open(self.pid_file) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                cmdline = handle.read()
        except OSError:
            return None
        # Our qemu: its command line names our overlay (a recycled pid would not).
        return pid if self.overlay.encode() in cmdline else None

    @property
    def port(self):
        try:
            with open(self.port_file) as handle:
                return int(handle.read())
        except (OSError, ValueError):
            return None

    def ssh_argv(self, argv=None, tty=False):
        cmd = ["ssh", "-p", str(self.port), "-i", self.lab.ssh_key,
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"]
        if tty:
            cmd.append("-t")
        cmd.append("root@127.0.0.1")
        if argv:
            cmd.append(" ".join(shlex.quote(a) for a in argv))
        return cmd

    def ssh(self, argv, check=True, timeout=None, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(self.ssh_argv(argv), universal_newlines=True, check=check,
                              timeout=timeout, **kw)

    def boot(self, accel, kernel=None):
        """Start qemu: on a fresh overlay of the image with the image's kernel, or with
        `kernel` (a release whose files the guest itself holds, fetched by `reboot_into`)
        on the overlay as the guest left it."""
        os.makedirs(self.state, exist_ok=True)
        if self.pid:
            return False
        image = self.lab.image
        if kernel is None:
            sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.raw,
               self.overlay)
            port = _free_port(SSH_PORT_BASE + 10 * self.index)
            with open(self.port_file, "w") as handle:
                handle.write(str(port))
            with open(self.accel_file, "w") as handle:
                handle.write(accel)
            vmlinuz, initrd = image.kernel, image.initrd
        else:
            port = self.port
            vmlinuz, initrd = self._kernel_files(kernel)
        if os.path.exists(self.console):
            os.replace(self.console, self.console + ".previous")
        cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
            ["-accel", "tcg,thread=multi", "-cpu", os.environ.get("MICROSEG_VM_CPU", "qemu64")]
        netdev = ("user,id=mgmt,net=%s.0/24,host=%s.2,dns=%s.3,dhcpstart=%s.15,"
                  "hostfwd=tcp:127.0.0.1:%d-:22" % (USER_NET, USER_NET, USER_NET, USER_NET, port))
        argv = ["qemu-system-x86_64", "-name", "microseg-" + self.name] + cpu + [
            "-smp", str(min(2, os.cpu_count() or 1)), "-m", str(GUEST_MEMORY_MB),
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-serial", "file:" + self.console,
            "-drive", "file=%s,if=virtio,format=qcow2,cache=unsafe,discard=unmap" % self.overlay,
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=mgmt",
            "-device", "virtio-rng-pci",
            "-kernel", vmlinuz, "-initrd", initrd,
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname=%s "
                       "systemd.show_status=false" % self.name,
            "-pidfile", self.pid_file, "-daemonize"]
        proc = sh(*argv, check=False)
        if proc.returncode:
            raise SystemExit("vm: qemu for %s did not start: %s" % (self.name, proc.stderr.strip()))
        return True

    def wait_ssh(self, timeout=BOOT_TIMEOUT, after=None):
        started = time.time()
        deadline = started + timeout
        while time.time() < deadline:
            if not self.pid:
                raise SystemExit("vm: %s's qemu exited; console:\n%s"
                                 % (self.name, self.console_tail()))
            probe = subprocess.run(self.ssh_argv(["cat", "/proc/sys/kernel/random/boot_id"]),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   universal_newlines=True, check=False)
            if probe.returncode == 0 and probe.stdout.strip() and probe.stdout.strip() != after:
                return time.time() - started
            time.sleep(2)
        raise SystemExit("vm: %s: no SSH after %d s; console:\n%s"
                         % (self.name, timeout, self.console_tail()))

    def console_tail(self, lines=40):
        try:
            with open(self.console, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no console log)"

    def containers(self):
        return [(name, "%s.%d" % (self.subnet, last)) for name, last in CONTAINERS]

    def start_containers(self):
        # The probe comes from this checkout at each `up`, not from the cached image.
        with open(NETPROBE) as handle:
            self.ssh(["sh", "-c", "mkdir -p /srv/ms && cat > /srv/ms/netprobe.py"],
                     input=handle.read())
        script = CONTAINERS_UP % {
            "network": PODMAN_NETWORK, "subnet": self.subnet,
            "containers": " ".join("%s=%s" % pair for pair in self.containers()),
            "services": " ".join("%s:%d" % service for service in SERVICES)}
        out = self.ssh(["sh", "-c", script], check=False)
        if out.returncode:
            raise SystemExit("vm: %s: starting the podman containers failed:\n%s%s"
                             % (self.name, out.stdout, out.stderr))
        lines = out.stdout.strip().splitlines()
        bridge = [line.split()[1] for line in lines if line.startswith("bridge ")]
        if not bridge:
            raise SystemExit("vm: %s: podman did not name msnet's bridge:\n%s"
                             % (self.name, out.stdout))
        with open(self.bridge_file, "w") as handle:
            handle.write(bridge[0])
        return [line for line in lines if not line.startswith("bridge ")]

    @property
    def bridge(self):
        """The bridge podman made for msnet (podman 4.3 names it itself: podman1, ...)."""
        try:
            with open(self.bridge_file) as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def boot_id(self):
        return self.ssh(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def reboot(self):
        before = self.boot_id()
        self.ssh(["systemctl", "reboot"], check=False)
        return self.wait_ssh(after=before)

    def _kernel_files(self, release):
        return (os.path.join(self.state, "vmlinuz-" + release),
                os.path.join(self.state, "initrd.img-" + release))

    def reboot_into(self, release):
        """Reboot the guest into another kernel it has installed, as a bootloader would:
        qemu boots its kernel directly, so the guest's /boot/vmlinuz-RELEASE and initrd are
        copied out, the guest powers off cleanly, and qemu starts again on the same disk.
        Later reboots from inside the guest keep that kernel (qemu's reset reuses it)."""
        before = self.boot_id()
        for (name, local) in zip(("vmlinuz", "initrd.img"), self._kernel_files(release)):
            with open(local + ".tmp", "wb") as handle:
                got = subprocess.run(self.ssh_argv(["cat", "/boot/%s-%s" % (name, release)]),
                                     stdout=handle, stderr=subprocess.PIPE, check=False)
            if got.returncode:
                os.unlink(local + ".tmp")
                raise SystemExit("vm: %s has no /boot/%s-%s: %s"
                                 % (self.name, name, release, got.stderr.decode().strip()))
            os.replace(local + ".tmp", local)
        started = time.time()
        if not self._power_off(self.pid, 180):
            raise SystemExit("vm: %s did not power off within 180 s; console:\n%s"
                             % (self.name, self.console_tail()))
        with open(self.accel_file) as handle:
            accel = handle.read().strip()
        self.boot(accel, kernel=release)
        self.wait_ssh(after=before)
        return time.time() - started

    def _power_off(self, pid, seconds, ask=True):
        """Ask the guest to power off (unless not ask); True once qemu `pid` has exited
        within `seconds`."""
        if ask:
            try:
                self.ssh(["systemctl", "poweroff"], check=False, timeout=30)
            except subprocess.TimeoutExpired:
                pass        # the guest may hold the connection open as it goes down
        deadline = time.time() + seconds
        while time.time() < deadline and _pid_alive(pid):
            time.sleep(0.5)
        return not _pid_alive(pid)

    def stop(self):
        pid = self.pid
        if pid:
            # A clean poweroff first (the overlay is thrown away, but it keeps the log honest).
            if not self._power_off(pid, 20, ask=bool(self.port)):
                os.kill(pid, signal.SIGTERM)
                deadline = time.time() + 10
                while time.time() < deadline and _pid_alive(pid):
                    time.sleep(0.2)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


class VMLab:

    def __init__(self, state_dir=None, inventory=None, cache_dir=None, accel="auto"):
        self.state_dir = os.path.abspath(state_dir or os.path.join(HERE, ".state-vm"))
        self.inventory = os.path.abspath(inventory or os.path.join(HERE, "inventory-vm",
                                                                   "hosts.yml"))
        self.cache_dir = os.path.abspath(cache_dir or os.environ.get("MICROSEG_VM_CACHE")
                                         or "/var/cache/ebpf-microseg/vm")
        self.image = Image(self.cache_dir)
        self.accel = accel
        # The running guests' key, copied at `up`: a later image (another key) must not lock
        # the lab out of guests booted from an earlier one.
        self.ssh_key = os.path.join(self.state_dir, "id_ed25519")

    def guests(self):
        if not os.path.isdir(self.state_dir):
            return []
        found = [Guest(self, int(entry[2:])) for entry in os.listdir(self.state_dir)
                 if entry.startswith("vm") and entry[2:].isdigit()]
        return sorted(found, key=lambda g: g.index)

    def guest(self, name):
        if not (name.startswith("vm") and name[2:].isdigit()):
            raise SystemExit("vm: no guest %r (guests are vm1, vm2, ...)" % name)
        guest = Guest(self, int(name[2:]))
        if not guest.pid:
            raise SystemExit("vm: %s is not running (vm.py up)" % name)
        return guest

    def up(self, count, containers=True):
        if not 1 <= count <= MAX_HOSTS:
            raise SystemExit("vm: --hosts must be 1..%d" % MAX_HOSTS)
        timings = {"started": time.time()}
        timings["image_build"] = self.image.build()
        accel = self.accel if self.accel != "auto" else probe_kvm(self.image, self.cache_dir)
        say("accelerator: %s%s" % (accel, "" if accel == "kvm" else
                                   " (software emulation: guests run several times slower)"))
        os.makedirs(self.state_dir, exist_ok=True)
        if not any(g.pid for g in self.guests()):
            shutil.copyfile(self.image.ssh_key, self.ssh_key)
            os.chmod(self.ssh_key, 0o600)
        elif self.image.ssh_key and _read(self.image.ssh_key) != _read(self.ssh_key):
            raise SystemExit("vm: the running guests were booted from another image; "
                             "vm.py down first")
        wanted = [Guest(self, i) for i in range(1, count + 1)]
        fresh = [g for g in wanted if g.boot(accel)]
        for guest in fresh:
            say("%s booting (console %s)" % (guest.name, guest.console))
        for guest in fresh:
            seconds = guest.wait_ssh()
            timings["boot_to_ssh_" + guest.name] = seconds
            say("%s up: ssh root@127.0.0.1 -p %d (%.0f s to SSH, qemu pid %d)"
                % (guest.name, guest.port, seconds, guest.pid))
        everyone = [g for g in self.guests() if g.pid]
        if containers:
            for guest in everyone:
                step = time.time()
                listing = guest.start_containers()
                say("%s containers in %.0f s: %s"
                    % (guest.name, time.time() - step, "; ".join(listing)))
        self.write_inventory(everyone)
        timings["total"] = time.time() - timings.pop("started")
        with open(os.path.join(self.state_dir, "timings.json"), "w") as handle:
            json.dump(dict((k, round(v, 1)) for k, v in timings.items()), handle, indent=2)
        say("%d guests up in %.0f s; inventory %s"
            % (len(everyone), timings["total"], self.inventory))

    def down(self):
        started = time.time()
        guests = self.guests()
        for guest in guests:
            guest.stop()
            say("%s down" % guest.name)
        if os.path.exists(self.inventory):
            os.unlink(self.inventory)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        say("%d guests removed in %.1f s" % (len(guests), time.time() - started))

    def status(self):
        for guest in self.guests():
            pid = guest.pid
            print("%-4s %-5s ssh 127.0.0.1:%-6s qemu pid %-8s containers %s.0/24 console %s"
                  % (guest.name, "up" if pid else "down", guest.port or "-", pid or "-",
                     guest.subnet, guest.console))

    def host_vars(self, guest):
        host_vars = {
            "ansible_host": "127.0.0.1",
            "ansible_port": guest.port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": self.ssh_key,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                                       " -o ControlMaster=auto -o ControlPersist=120s"
                                       " -o LogLevel=ERROR",
            "ansible_python_interpreter": "/usr/bin/python3",
            "lab_index": guest.index,
            "vm_console_log": guest.console,
            "vm_image": self.image.dir,
            # The kernel the image also holds, without its headers (the kernel-upgrade test).
            "vm_second_kernel": self.image.info().get("second_kernel"),
            # Not bridge_veth_containers: site.yml would build namespaces of that name.
            "vm_containers": [
                {"name": name, "bridge": guest.bridge, "address": address + "/24",
                 "gateway": guest.subnet + ".1"} for name, address in guest.containers()],
        }
        if guest.bridge:
            host_vars["microseg_bridge"] = guest.bridge
        return host_vars

    def write_inventory(self, guests):
        os.makedirs(os.path.dirname(self.inventory), exist_ok=True)
        data = {"microseg_hosts": {"hosts": dict((g.name, self.host_vars(g)) for g in guests)}}
        tmp = self.inventory + ".tmp"
        with open(tmp, "w") as handle:
            handle.write("# Written by lab/vm.py up; removed by lab/vm.py down.\n")
            json.dump(data, handle, indent=2, sort_keys=True)   # JSON is YAML
            handle.write("\n")
        os.rename(tmp, self.inventory)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="guests' overlays, consoles, pids (lab/.state-vm)")
    parser.add_argument("--inventory", help="where up writes hosts.yml (lab/inventory-vm)")
    parser.add_argument("--cache", help="image cache (MICROSEG_VM_CACHE, "
                                        "/var/cache/ebpf-microseg/vm)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("image")
    up = sub.add_parser("up")
    up.add_argument("--hosts", type=int, default=1)
    up.add_argument("--no-containers", action="store_true")
    sub.add_parser("down")
    sub.add_parser("status")
    run = sub.add_parser("exec")
    run.add_argument("host")
    run.add_argument("--container")
    reboot = sub.add_parser("reboot")
    reboot.add_argument("host")
    reboot.add_argument("--kernel", metavar="RELEASE",
                        help="boot this kernel release, installed in the guest's /boot")
    console = sub.add_parser("console")
    console.add_argument("host")
    console.add_argument("--lines", type=int, default=60)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = []
    if "--" in argv:
        command = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and args.cmd in ("image", "up", "down"):
        raise SystemExit("vm: run as root (debootstrap, mkfs, the image cache)")
    lab = VMLab(args.state_dir, args.inventory, args.cache, args.accel)
    if args.cmd == "image":
        lab.image.build()
        print(lab.image.dir)
    elif args.cmd == "up":
        lab.up(args.hosts, containers=not args.no_containers)
    elif args.cmd == "down":
        lab.down()
    elif args.cmd == "status":
        lab.status()
    elif args.cmd == "exec":
        if not command:
            raise SystemExit("vm: exec needs a command after --")
        guest = lab.guest(args.host)
        if args.container:
            command = ["podman", "exec", "-i", args.container] + command
        return subprocess.call(guest.ssh_argv(command))
    elif args.cmd == "reboot":
        guest = lab.guest(args.host)
        seconds = guest.reboot_into(args.kernel) if args.kernel else guest.reboot()
        say("%s back after %.0f s%s"
            % (guest.name, seconds, " on " + args.kernel if args.kernel else ""))
    elif args.cmd == "console":
        sys.stdout.write(Guest(lab, int(args.host[2:])).console_tail(args.lines)
                         if args.host[2:].isdigit() else "")
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

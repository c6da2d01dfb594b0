# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`microseg_state: absent` removes everything the role added, over real SSH.

A 1-host lab fleet (lab/fleet.py). The lab host shares this machine's filesystem, so /etc,
/var and /opt are overlaid (tmpfs upper) inside the host's private mount namespace only: the
role runs with its defaults for fstab, the systemd unit directory, /opt/microseg,
/var/log/microseg and /var/cache/microseg without touching this machine's. A listing of
every file, directory, fstab line, mount and qdisc the role touches is taken before
`present`, checked to have grown during it, and must be back to the same after `absent`;
`absent` again changes nothing; `microseg_keep_logs: true` keeps the logs (and only them).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import subprocess
import time

import pytest

from ansible_collections.ebpf.microseg.tests.harness import ansible_runner
from ansible_collections.ebpf.microseg.tests.harness.lab_fleet import fleet_mod, lab_is_up

HOST = "h1"
VETH = "msra0"
LOG = "/var/log/microseg/events.jsonl"

# Run inside the host: what the role may touch, as JSON.
LISTING = r"""
import json, os, subprocess, sys
def walk(root, depth):
    out = []
    if not os.path.lexists(root):
        return out
    out.append(root)
    if os.path.isdir(root) and not os.path.islink(root) and depth > 0:
        for name in sorted(os.listdir(root)):
            out.extend(walk(os.path.join(root, name), depth - 1))
    return out
paths = []
for root, depth in (("/opt/microseg", 9), ("/var/log/microseg", 9), ("/var/cache/microseg", 2),
                    ("/var/lib/microseg", 9), ("/run/microseg", 9), ("/run/lock", 9),
                    ("/sys/fs/bpf", 9)):
    paths.extend(walk(root, depth))
units = []
for root, _dirs, files in os.walk("/etc/systemd/system"):
    units.extend(os.path.join(root, f) for f in files if "microseg" in f)
with open("/etc/fstab") as handle:
    fstab = [line.rstrip("\n") for line in handle]
with open("/proc/self/mounts") as handle:
    mounts = sorted(" ".join(line.split()[1:3]) for line in handle)
tc = subprocess.run(["tc", "qdisc", "show", "dev", sys.argv[1]], stdout=subprocess.PIPE,
                    universal_newlines=True, check=True).stdout.split("\n")
print(json.dumps({"paths": paths, "units": sorted(units), "fstab": fstab, "mounts": mounts,
                  "qdiscs": sorted(line for line in tc if line.strip())}))
"""


@pytest.fixture
def lab_host(tmp_path):
    if lab_is_up():
        pytest.skip("a lab fleet is up (mslab0 / msl-h*): run `lab/fleet.py down` first")
    lab = fleet_mod.Fleet(str(tmp_path / "state"), str(tmp_path / "inventory" / "hosts.yml"))
    try:
        lab.up(1)
        overlay = str(tmp_path / "overlay")
        os.mkdir(overlay)
        # Private to the host's mount namespace: this machine's /etc, /var, /opt stay as
        # they are (and the host's view goes with its namespace at `down`).
        script = ["set -e", "mount -t tmpfs tmpfs %s" % overlay]
        for lower in ("/etc", "/var", "/opt"):
            name = lower.strip("/")
            script += ["mkdir -p %s/%s.up %s/%s.work" % (overlay, name, overlay, name),
                       "mount -t overlay overlay -o lowerdir=%s,upperdir=%s/%s.up,workdir=%s/%s.work %s"
                       % (lower, overlay, name, overlay, name, lower)]
        script.append("ip link add %s type veth peer name %sp" % (VETH, VETH))
        script.append("ip link set %s up" % VETH)
        lab.exec(HOST, ["sh", "-c", "\n".join(script)], check=True)
        mounts = lab.exec(HOST, ["findmnt", "-n", "-o", "FSTYPE", "--target", "/var/cache"],
                          check=True).stdout.split()
        assert mounts == ["overlay"], mounts   # never touch this machine's /var
        # The headers cache the machine may have is not the host's business: start without.
        lab.exec(HOST, ["rm", "-rf", "/var/cache/microseg"], check=True)
        yield lab
    finally:
        lab.down()


def run_role(lab, work, expect_rc=0, **extra):
    play = [{"name": "microseg", "hosts": "microseg_hosts", "gather_facts": True,
             "gather_subset": ["min"],
             "roles": [{"role": "ebpf.microseg.microseg"}],
             "vars": {"microseg_install_packages": False,
                      "microseg_interfaces": [VETH],
                      "microseg_monitor_mode": "background",
                      "microseg_bpffs_persist": True,
                      "microseg_report": False,
                      "microseg_program_options": {"session_map_size": 65536,
                                                   "policy_map_size": 16384,
                                                   "range_map_size": 4096}}}]
    path = os.path.join(str(work), "play.yml")
    with open(path, "w") as handle:
        json.dump(play, handle)
    env = ansible_runner._env(str(work), {"ANSIBLE_HOST_KEY_CHECKING": "False",
                                          "ANSIBLE_PIPELINING": "True"})
    cmd = [ansible_runner.ansible_bin("ansible-playbook"), "-i", lab.inventory, path,
           "-e", json.dumps(extra)]
    started = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, cwd=str(work), check=False)
    result = ansible_runner._parse(proc, time.time() - started)
    if expect_rc == 0:
        assert result.rc == 0, "ansible-playbook failed:\n%s\n%s" % (result.stdout, result.stderr)
    else:
        assert result.rc != 0, "ansible-playbook passed:\n%s" % result.stdout
    return result


def listing(lab):
    return json.loads(lab.exec(HOST, ["python3", "-c", LISTING, VETH], check=True).stdout)


def monitors(lab):
    found = []
    for pid in lab.pids(every=True).get(HOST, []):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if b"microseg-monitor" in handle.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def test_absent_removes_what_present_added(lab_host, tmp_path):
    started = time.time()
    before = listing(lab_host)
    assert not [p for p in before["paths"] if "microseg" in p and p != "/run/microseg"], before

    present = run_role(lab_host, tmp_path)
    assert present.data["stats"][HOST]["changed"] > 0
    during = listing(lab_host)
    paths = set(during["paths"])
    # What present added, so that "back to before" means something.
    assert "bpf /sys/fs/bpf bpf defaults 0 0" in during["fstab"]
    for path in ("/opt/microseg/bin/microseg-monitor", "/opt/microseg/bin/microseg-monitorctl",
                 "/opt/microseg/lib/microseg-module-utils.zip", LOG,
                 "/run/microseg/monitor.args", "/run/microseg/monitor.pid",
                 "/sys/fs/bpf/microseg"):
        assert path in paths, path
    assert [p for p in paths if p.startswith("/run/lock/microseg-policy-")]
    # The records the boot restore reads (the role's default state_dir).
    records = [p for p in paths if p.startswith("/var/lib/microseg/instances/")]
    assert [p for p in records if p.endswith("/program.json")], records
    assert [p for p in records if p.endswith("/policy.json")], records
    if not os.path.isdir("/lib/modules/%s/build" % os.uname()[2]) and \
            not os.path.exists("/sys/kernel/kheaders.tar.xz"):
        assert "/var/cache/microseg" in paths   # the fallback headers tree
    assert any("clsact" in line for line in during["qdiscs"]), during["qdiscs"]
    assert monitors(lab_host)
    # The rotation options reach the running monitor (the role's defaults: 100 MiB x 5).
    args = lab_host.exec(HOST, ["cat", "/run/microseg/monitor.args"], check=True).stdout.split("\n")
    assert args[args.index("--log-max-bytes") + 1] == "104857600"
    assert args[args.index("--log-backups") + 1] == "5"
    # Rotated logs, as the monitor leaves them (events.jsonl.1 ...).
    lab_host.exec(HOST, ["sh", "-c", "echo '{}' > %s.1 && echo '{}' > %s.2" % (LOG, LOG)], check=True)

    absent = run_role(lab_host, tmp_path, microseg_state="absent")
    assert absent.data["stats"][HOST]["changed"] > 0
    after = listing(lab_host)
    for key in ("fstab", "units", "mounts", "qdiscs", "paths"):
        assert after[key] == before[key], (key, sorted(set(after[key]) ^ set(before[key])))
    assert monitors(lab_host) == []

    again = run_role(lab_host, tmp_path, microseg_state="absent")
    assert again.data["stats"][HOST]["changed"] == 0, again.stdout

    # microseg_keep_logs: the logs and their directory stay, the rest still goes.
    lab_host.exec(HOST, ["sh", "-c", "mkdir -p /var/log/microseg /opt/microseg/bin && "
                                     "echo '{}' > %s && echo '{}' > %s.1" % (LOG, LOG)], check=True)
    run_role(lab_host, tmp_path, microseg_state="absent", microseg_keep_logs=True)
    kept = listing(lab_host)["paths"]
    assert [p for p in kept if "/var/log/microseg" in p] == ["/var/log/microseg", LOG, LOG + ".1"]
    assert "/opt/microseg" not in kept
    run_role(lab_host, tmp_path, microseg_state="absent")
    assert listing(lab_host) == before
    assert time.time() - started < 240


def test_the_role_runs_through_a_non_root_ssh_user_with_sudo(lab_host, tmp_path):
    """AWX-style: SSH as an ordinary user, escalate on the target with become (sudo)."""
    # The user exists only in the host's overlaid /etc and /var (see lab_host).
    lab_host.exec(HOST, ["sh", "-c", "\n".join([
        "set -e",
        "useradd -m -d /var/lib/msops -s /bin/sh msops",
        "usermod -p '*' msops",     # no password, and not locked: key login works
        "echo 'msops ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/msops",
        "chmod 0440 /etc/sudoers.d/msops",
        "mkdir -p /var/lib/msops/.ssh",
        "cp %s.pub /var/lib/msops/.ssh/authorized_keys" % lab_host.key,
        "chown -R msops /var/lib/msops/.ssh",
        "chmod 0700 /var/lib/msops/.ssh"])], check=True)
    who = lab_host.exec(HOST, ["sudo", "-u", "msops", "id", "-u"], check=True).stdout.strip()
    assert who != "0"
    # Without become an ordinary user cannot load BPF: the run fails, and says so.
    refused = run_role(lab_host, tmp_path, expect_rc=1, ansible_user="msops")
    assert '"unreachable": 0' in refused.stdout, "SSH as msops did not work"
    assert "needs root on h1" in refused.stdout and "become: true" in refused.stdout, \
        refused.stdout[-2000:]
    ran = run_role(lab_host, tmp_path, ansible_user="msops", ansible_become=True)
    assert ran.rc == 0
    filters = lab_host.exec(HOST, ["tc", "filter", "show", "dev", VETH, "ingress"],
                            check=True).stdout
    assert "microseg_from_container" in filters, filters
    assert monitors(lab_host), "the monitor does not run"
    run_role(lab_host, tmp_path, ansible_user="msops", ansible_become=True,
             microseg_state="absent")

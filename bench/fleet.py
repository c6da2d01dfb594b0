# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""site.yml on the lab fleet, and microseg_policy against ansible.builtin.iptables.

1. For 3 and 10 hosts: build the fleet, time `ansible-playbook site.yml` (first run, with
   compile) and an idempotent re-run, tear the fleet down.
2. On 3 hosts: push R extra rules fleet-wide, once as microseg_policy (the role's policy
   task, `--tags microseg_policy`) and once as an equivalent playbook of
   ansible.builtin.iptables tasks (one rule per loop item, FORWARD chain in each host's own
   network namespace), first run and re-run, alternating the contenders.

Run as root from the collection root with the collection on ANSIBLE_COLLECTIONS_PATH
(`make bench` does). Prints markdown tables; returns them to bench/run.py.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLEET = os.path.join(ROOT, "lab", "fleet.py")
INVENTORY = os.path.join(ROOT, "lab", "inventory")

IPTABLES_PLAY = """
- name: The same rules as ansible.builtin.iptables tasks
  hosts: microseg_hosts
  gather_facts: false
  tasks:
    - name: Chain for the benchmark
      ansible.builtin.command: iptables -N MSBENCH
      register: chain
      changed_when: chain.rc == 0
      failed_when: chain.rc not in [0, 1]
    - name: One iptables rule per policy rule
      ansible.builtin.iptables:
        chain: MSBENCH
        protocol: tcp
        source: "{{ item.src }}"
        destination: "{{ item.dst }}"
        destination_port: "{{ item.port }}"
        jump: ACCEPT
        comment: "{{ item.name }}"
      loop: "{{ bench_rules }}"
      loop_control:
        label: "{{ item.name }}"
"""

IPTABLES_CLEANUP = """
- name: Remove the benchmark chain
  hosts: microseg_hosts
  gather_facts: false
  tasks:
    - name: Flush and delete MSBENCH
      ansible.builtin.shell: iptables -F MSBENCH && iptables -X MSBENCH || true
      changed_when: true
"""


def say(text):
    sys.stderr.write("  %s\n" % text)
    sys.stderr.flush()


def fleet(*args):
    subprocess.run([sys.executable, FLEET] + list(args), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def playbook(path, *extra):
    env = dict(os.environ, ANSIBLE_FORKS="20", ANSIBLE_HOST_KEY_CHECKING="False")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", INVENTORY,
           path] + list(extra)
    started = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    seconds = time.time() - started
    if proc.returncode:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), proc.stdout[-4000:]))
    recap = proc.stdout[proc.stdout.rfind("PLAY RECAP"):]
    changed = sum(int(part.split("=")[1]) for part in recap.split() if part.startswith("changed="))
    return seconds, changed


def site_rows(sizes, on_three_hosts=None):
    """site.yml first run and re-run per fleet size; on_three_hosts() then runs on the
    converged 3-host fleet, so the rule-push comparison needs no fleet of its own."""
    rows = []
    for hosts in sizes:
        fleet("down")
        fleet("up", "--hosts", str(hosts))
        try:
            first, changed_first = playbook(os.path.join(ROOT, "site.yml"))
            again, changed_again = playbook(os.path.join(ROOT, "site.yml"))
            say("site.yml on %d hosts: %.1f s first, %.1f s re-run" % (hosts, first, again))
            rows.append(("site.yml, %d hosts, first run (compile on every host)" % hosts,
                         "%.1f" % first, str(changed_first)))
            rows.append(("site.yml, %d hosts, idempotent re-run" % hosts, "%.1f" % again,
                         str(changed_again)))
            if hosts == 3 and on_three_hosts is not None:
                on_three_hosts()
        finally:
            fleet("down")
    return rows


def bench_rules(count):
    """count allow rules web -> db on distinct ports (equivalent in both contenders)."""
    return [{"name": "bench-%d" % i, "src": "198.18.11.10/32", "dst": "198.18.12.20/32",
             "port": 10000 + i} for i in range(count)]


def policy_rows(counts, iptables_limit, rerun_limit=10):
    """On its own 3-host fleet; see policy_rows_on_fleet."""
    fleet("down")
    fleet("up", "--hosts", "3")
    try:
        playbook(os.path.join(ROOT, "site.yml"))
        return policy_rows_on_fleet(counts, iptables_limit, rerun_limit)
    finally:
        fleet("down")


def policy_rows_on_fleet(counts, iptables_limit, rerun_limit=10):
    """microseg_policy against an ansible.builtin.iptables loop on a converged 3-host fleet.

    The iptables loop is re-run (to show its idempotent cost) only up to rerun_limit rules:
    at 100 rules one run takes minutes, and a re-run costs the same.
    """
    rows = []
    work = tempfile.mkdtemp(prefix="msbench-")
    try:
        ipt = os.path.join(work, "iptables.yml")
        cleanup = os.path.join(work, "cleanup.yml")
        with open(ipt, "w") as handle:
            handle.write(IPTABLES_PLAY)
        with open(cleanup, "w") as handle:
            handle.write(IPTABLES_CLEANUP)
        for count in counts:
            rules = bench_rules(count)
            vars_file = os.path.join(work, "rules-%d.json" % count)
            with open(vars_file, "w") as handle:
                json.dump({
                    "bench_rules": rules,
                    "microseg_group_rules": [
                        {"name": r["name"], "direction": "both", "src": [r["src"]],
                         "dst": [r["dst"]], "protocol": "tcp", "dst_ports": [r["port"]],
                         "action": "allow"} for r in rules]}, handle)
            args = ("-e", "@" + vars_file, "--tags", "microseg_policy")
            ms_first, _c = playbook(os.path.join(ROOT, "site.yml"), *args)
            ms_again, ms_changed = playbook(os.path.join(ROOT, "site.yml"), *args)
            rows.append(("microseg_policy (role, --tags microseg_policy), %d rules x 3 hosts"
                         % count, "%.1f" % ms_first, "%.1f" % ms_again, str(ms_changed)))
            say("microseg_policy %d rules: %.1f / %.1f s" % (count, ms_first, ms_again))
            if count <= iptables_limit:
                ipt_first, _c = playbook(ipt, "-e", "@" + vars_file)
                again, changed = "not run (> %d rules)" % rerun_limit, "-"
                if count <= rerun_limit:
                    ipt_again, ipt_changed = playbook(ipt, "-e", "@" + vars_file)
                    again, changed = "%.1f" % ipt_again, str(ipt_changed)
                playbook(cleanup)
                rows.append(("ansible.builtin.iptables loop, %d rules x 3 hosts" % count,
                             "%.1f" % ipt_first, again, changed))
                say("iptables %d rules: %.1f s first, re-run %s" % (count, ipt_first, again))
            else:
                rows.append(("ansible.builtin.iptables loop, %d rules x 3 hosts" % count,
                             "not run (> %d)" % iptables_limit, "-", "-"))
    finally:
        subprocess.run(["rm", "-rf", work], check=False)
    return rows


def main():
    from ansible_collections.ebpf.microseg.bench.run import table  # pylint: disable=import-outside-toplevel
    quick = "--quick" in sys.argv
    policy = []

    def push():
        policy.extend(policy_rows_on_fleet([10] if quick else [10, 100, 1000],
                                           10 if quick else 100))

    site = site_rows([3] if quick else [3, 10], on_three_hosts=push)
    print("## site.yml on the lab fleet, wall seconds\n")
    print(table(("run", "seconds", "changed tasks"), site))
    print("\n## Pushing R rules: microseg_policy vs ansible.builtin.iptables, wall seconds\n")
    print(table(("contender", "first run", "re-run", "changed on re-run"), policy))
    return site, policy


if __name__ == "__main__":
    main()

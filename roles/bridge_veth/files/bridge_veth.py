# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge bridges and container namespaces with veth pairs (run by the bridge_veth role).

  python3 bridge_veth.py '<json spec>' [--check]

spec: {"state": "present"|"absent", "bridges": [{name, address?}],
       "containers": [{name, bridge, address, gateway?, host_if?, mtu?}]}
Prints one JSON object on stdout: {"changed": bool, "actions": [...]} - in check mode the
actions that a real run would take, and nothing is done. On an error: {"failed": true,
"msg": ..., "actions": [what was done before it]} and exit status 1.
"""

import json
import subprocess
import sys


class Failure(Exception):
    pass


def ip_json(*argv, netns=None):
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j", "-d"] + list(argv)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, check=False)
    if res.returncode or not res.stdout.strip():
        return []
    return json.loads(res.stdout)


def netns_names():
    res = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=False)
    return set(line.split()[0] for line in res.stdout.splitlines() if line.strip())


def link(name, netns=None, kind=None):
    found = ip_json("addr", "show", "dev", name, netns=netns)
    if not found:
        return None
    actual = found[0].get("linkinfo", {}).get("info_kind")
    if kind and actual != kind:
        raise Failure("%s%s exists but is a %s, not a %s" % (
            name, " (in %s)" % netns if netns else "", actual or "plain device", kind))
    return found[0]


def addresses(entry):
    return set("%s/%s" % (a["local"], a["prefixlen"]) for a in entry.get("addr_info", [])
               if a.get("family") == "inet")


def host_if(container):
    return container.get("host_if") or ("ms-" + container["name"])[:15]


class Plan:
    def __init__(self, check):
        self.check = check
        self.actions = []

    def do(self, description, *commands):
        self.actions.append(description)
        if self.check:
            return
        for argv in commands:
            res = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, check=False)
            if res.returncode:
                raise Failure("%s: %s failed: %s"
                              % (description, " ".join(argv), res.stderr.strip()))


def bridge_present(plan, bridge):
    name = bridge["name"]
    entry = link(name, kind="bridge")
    if entry is None:
        plan.do("create bridge %s" % name, ["ip", "link", "add", name, "type", "bridge"],
                ["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % name])
        entry = {"flags": [], "addr_info": []}
    if bridge.get("address") and bridge["address"] not in addresses(entry):
        plan.do("address %s on %s" % (bridge["address"], name),
                ["ip", "addr", "replace", bridge["address"], "dev", name])
    if "UP" not in entry.get("flags", []):
        plan.do("bring %s up" % name, ["ip", "link", "set", name, "up"])


def container_present(plan, ctr, namespaces):
    ns, hif = ctr["name"], host_if(ctr)
    inside = ["ip", "netns", "exec", ns]
    if ns not in namespaces:
        plan.do("create namespace %s" % ns, ["ip", "netns", "add", ns],
                inside + ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                inside + ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
                ["ip", "-n", ns, "link", "set", "lo", "up"])
    host_side = link(hif, kind="veth")
    if host_side is None:
        plan.do("create veth %s <-> %s:eth0" % (hif, ns),
                ["ip", "link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", ns],
                ["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % hif])
        host_side = {"flags": [], "addr_info": []}
    if host_side.get("master") != ctr["bridge"]:
        plan.do("attach %s to %s" % (hif, ctr["bridge"]),
                ["ip", "link", "set", hif, "master", ctr["bridge"]])
    peer = link("eth0", netns=ns, kind="veth") if ns in namespaces else None
    if ctr.get("mtu") and (host_side.get("mtu") != ctr["mtu"]
                           or (peer or {}).get("mtu") != ctr["mtu"]):
        plan.do("mtu %d on %s" % (ctr["mtu"], hif),
                ["ip", "link", "set", hif, "mtu", str(ctr["mtu"])],
                ["ip", "-n", ns, "link", "set", "eth0", "mtu", str(ctr["mtu"])])
    if "UP" not in host_side.get("flags", []):
        plan.do("bring %s up" % hif, ["ip", "link", "set", hif, "up"])
    if peer is None or ctr["address"] not in addresses(peer):
        plan.do("address %s in %s" % (ctr["address"], ns),
                ["ip", "-n", ns, "addr", "replace", ctr["address"], "dev", "eth0"])
    if peer is None or "UP" not in peer.get("flags", []):
        plan.do("bring %s:eth0 up" % ns, ["ip", "-n", ns, "link", "set", "eth0", "up"])
    if ctr.get("gateway"):
        routes = ip_json("route", "show", "default", netns=ns) if ns in namespaces else []
        if not any(r.get("gateway") == ctr["gateway"] for r in routes):
            plan.do("default route via %s in %s" % (ctr["gateway"], ns),
                    ["ip", "-n", ns, "route", "replace", "default", "via", ctr["gateway"]])


def absent(plan, spec, namespaces):
    for ctr in spec.get("containers", []):
        hif = host_if(ctr)
        if link(hif, kind="veth") is not None:
            plan.do("delete veth %s" % hif, ["ip", "link", "del", hif])
        if ctr["name"] in namespaces:
            plan.do("delete namespace %s" % ctr["name"], ["ip", "netns", "del", ctr["name"]])
    for bridge in spec.get("bridges", []):
        if link(bridge["name"], kind="bridge") is not None:
            plan.do("delete bridge %s" % bridge["name"], ["ip", "link", "del", bridge["name"]])


def validate(spec):
    if spec.get("state", "present") not in ("present", "absent"):
        raise Failure("state must be present or absent, not %r" % spec.get("state"))
    for bridge in spec.get("bridges", []):
        if not bridge.get("name"):
            raise Failure("bridge without a name: %r" % (bridge,))
    for ctr in spec.get("containers", []):
        for field in ("name", "bridge", "address"):
            if not ctr.get(field):
                raise Failure("container %r: %s is required" % (ctr.get("name"), field))
        if "/" not in ctr["address"]:
            raise Failure("container %s: address %r needs a prefix length (CIDR)"
                          % (ctr["name"], ctr["address"]))
        if len(host_if(ctr)) > 15:
            raise Failure("container %s: host_if %r is longer than 15 characters"
                          % (ctr["name"], host_if(ctr)))


def main(argv):
    plan = Plan(check="--check" in argv[1:])
    try:
        spec = json.loads(argv[0])
        validate(spec)
        namespaces = netns_names()
        if spec.get("state", "present") == "present":
            for bridge in spec.get("bridges", []):
                bridge_present(plan, bridge)
            for ctr in spec.get("containers", []):
                container_present(plan, ctr, namespaces)
        else:
            absent(plan, spec, namespaces)
    except (Failure, ValueError, IndexError) as exc:
        print(json.dumps({"failed": True, "changed": bool(plan.actions) and not plan.check,
                          "msg": str(exc), "actions": plan.actions}))
        return 1
    print(json.dumps({"changed": bool(plan.actions), "actions": plan.actions}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

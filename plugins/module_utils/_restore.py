# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot restore: what microseg.service runs before the container runtimes start.

bpffs is empty after a reboot and the kernel holds no filter. For every instance recorded
under the state directory (_saved_state.py) this mounts bpffs, compiles the recorded BPF
source against this kernel's headers (or the fallback tree,
_kernel_headers.find_kernel_headers), pins, attaches to the selected interfaces that exist
now (a container runtime's bridge and ports usually do not yet: the monitor attaches them
as they appear), and converges the recorded policy - the same plan and apply code the
modules run, so a restore is an Ansible run without Ansible. Progress goes to stdout (the
journal under systemd); the result goes to restore.json beside the record, where
microseg_facts reads it.

Exit status 0 when every instance is enforcing again (or nothing was recorded), 1 otherwise:
microseg.service then fails, and with the role's microseg_boot_failure=block the container
runtimes, whose drop-ins check that it is active, do not start.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import os
import sys
import time
import traceback

from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _policy
from ansible_collections.ebpf.microseg.plugins.module_utils import _program
from ansible_collections.ebpf.microseg.plugins.module_utils import _saved_state


class RestoreError(Exception):
    pass


def _iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def restore_program(record, say):
    """Load, pin and attach the recorded program; return a step report."""
    params = dict(record["params"])
    params.update(state="present", state_dir=None)
    sources = record.get("sources") or {}
    if not sources:
        raise RestoreError("the record holds no BPF source")
    try:
        sizes = _program.validate(params)
    except _program.ProgramError as exc:
        raise RestoreError("recorded parameters: %s" % exc)
    ipr = _netlink.open_route()
    try:
        current = _program.gather(params, ipr)
        program_plan = _program.plan(params, sources, current, sizes, missing_ok=True)
        report = {"step": "program", "actions": len(program_plan.actions), "compiled": False}
        if program_plan.actions:
            applied = _program.apply(params, sources, current, program_plan, sizes,
                                     _kernel_headers.find_kernel_headers, ipr)
            report.update((k, applied[k]) for k in ("compiled", "compile_seconds", "headers",
                                                    "bpffs_mounted") if k in applied)
        report["interfaces"] = sorted(program_plan.after["interfaces"])
        report["cache_key"] = program_plan.cache_key
    finally:
        ipr.close()
    selection = []
    if params.get("bridge"):
        selection.append("bridge %s" % params["bridge"])
    if params.get("interfaces"):
        selection.append("interfaces %s" % ", ".join(params["interfaces"]))
    if report["compiled"]:
        headers = report.get("headers") or {}
        say("program: compiled in %.1f s with %s headers %s" % (
            report.get("compile_seconds") or 0, headers.get("kind", "?"),
            headers.get("path", "?")))
    else:
        say("program: already pinned and current (%d actions)" % report["actions"])
    say("program: attached to %s (selection: %s; the monitor attaches the rest as they appear)"
        % (", ".join(report["interfaces"]) or "no interface yet", "; ".join(selection) or "-"))
    return report


def restore_policy(record, pin_path, say):
    policy = record.get("policy") or {}
    params = {"state": "overridden", "pin_path": pin_path, "state_dir": None,
              "rules": policy.get("rules") or [], "segments": policy.get("segments") or {},
              "default_action": policy.get("default_action"), "rule_sources": None,
              "tiers": policy.get("tiers"),
              "_restored_digest": record.get("input_digest"),
              "_restored_ids": record.get("rule_ids")}
    try:
        result = _policy.run(params, False, False)
    except _policy.PolicyInputError as exc:
        raise RestoreError("recorded policy: %s" % exc)
    entries = dict((name, change["entries"])
                   for name, change in (result.get("entry_changes") or {}).items())
    say("policy: generation %d, %d rules, default egress %s / ingress %s, entries %s" % (
        result["generation"], len(params["rules"]),
        (params["default_action"] or {}).get("egress", "?"),
        (params["default_action"] or {}).get("ingress", "?"),
        ", ".join("%s %d" % item for item in sorted(entries.items())) or "none"))
    return {"step": "policy", "generation": result["generation"], "rules": len(params["rules"]),
            "changed": result["changed"], "entries": entries}


def restore_instance(directory, say):
    started = time.time()
    outcome = {"result": "failed", "started": _iso(started), "boot_id": _saved_state.boot_id(),
               "kernel": os.uname()[2], "steps": []}
    pin_path = None
    try:
        program = _saved_state.read_json(os.path.join(directory, _saved_state.PROGRAM_FILE))
        if not program or "params" not in program:
            raise RestoreError("no program record in %s" % directory)
        pin_path = program["params"]["pin_path"]
        outcome["pin_path"] = pin_path
        say("restoring %s from %s" % (pin_path, directory))
        outcome["steps"].append(restore_program(program, say))
        policy = _saved_state.read_json(os.path.join(directory, _saved_state.POLICY_FILE))
        if policy:
            outcome["steps"].append(restore_policy(policy, pin_path, say))
        else:
            say("policy: none recorded (the program's default actions apply: allow)")
        outcome["result"] = "ok"
    except Exception as exc:  # pylint: disable=broad-except
        # Whatever broke, the unit must fail with the reason in the journal and in facts.
        outcome["message"] = "%s: %s" % (type(exc).__name__, exc)
        say("FAILED: %s" % outcome["message"])
        if not isinstance(exc, (RestoreError, _loader.LoaderError, _program.ProgramError,
                                _netlink.NetlinkError, _saved_state.SavedStateError)):
            say(traceback.format_exc().rstrip())
    finished = time.time()
    outcome["finished"] = _iso(finished)
    outcome["seconds"] = round(finished - started, 3)
    try:
        _saved_state.save_restore_result(directory, outcome)
    except (IOError, OSError) as exc:
        say("could not write %s: %s" % (_saved_state.RESTORE_FILE, exc))
    say("%s: %s in %.1f s" % (pin_path or directory, outcome["result"], outcome["seconds"]))
    return outcome


def main(argv=None, out=None):
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="microseg-restore",
        description="Restore the microseg program and policy recorded under the state "
                    "directory (run at boot by microseg.service).")
    parser.add_argument("--state-dir", default=os.environ.get(_saved_state.STATE_DIR_ENV) or
                        _saved_state.DEFAULT_STATE_DIR)
    parser.add_argument("--pin-path", action="append", default=[],
                        help="restore only this instance (repeatable); default: every one")
    args = parser.parse_args(argv)

    def say(text):
        out.write("microseg-restore: %s\n" % text)
        out.flush()

    directories = _saved_state.instances(args.state_dir)
    missing = []
    if args.pin_path:
        wanted = set(_saved_state.instance_dir(args.state_dir, p) for p in args.pin_path)
        missing = sorted(wanted - set(directories))
        for directory in missing:
            say("FAILED: nothing recorded in %s" % directory)
        directories = [d for d in directories if d in wanted]
    elif not directories:
        say("nothing recorded under %s: nothing to restore" % args.state_dir)
        return 0
    results = [restore_instance(directory, say) for directory in directories]
    return 1 if missing or any(r["result"] != "ok" for r in results) else 0

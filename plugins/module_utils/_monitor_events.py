# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitor's LOG events: one ring buffer record as the JSON line users read, and the
size-rotated file they go to."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps

DEFAULT_LOG_MAX_BYTES = 100 * 1024 * 1024   # events.jsonl rotates past this size
DEFAULT_LOG_BACKUPS = 5                      # events.jsonl.1 (newest) .. .5 (oldest)


def event_record(event, rule_names, ifnames, wall_of):
    """One LOG event as the dict written as a JSON line."""
    proto = _abi.PROTOCOL_NAMES.get(event.protocol, event.protocol)
    record = {
        "time": _facts._iso(wall_of(event.timestamp_ns)),  # pylint: disable=protected-access
        "src": _maps.u32_to_ip(event.src_ip), "dst": _maps.u32_to_ip(event.dst_ip),
        "protocol": proto,
        "direction": "ingress" if event.direction == _abi.MS_DIR_INGRESS else "egress",
        "rule": rule_names.get(event.policy_id),
        "policy_id": event.policy_id,
        "verdict": _abi.ACTION_NAMES.get(event.action, event.action),
        "reason": _abi.LOG_REASONS.get(event.reason, event.reason),
        "interface": ifnames.get(event.ifindex, event.ifindex),
        "policy_generation": event.policy_ver,
    }
    if event.protocol in (6, 17):
        record["src_port"] = event.src_port
        record["dst_port"] = event.dst_port
    return record


class EventLog:
    """LOG events as JSON lines in a file rotated by size, between whole records.

    A record that would take the file past max_bytes first renames FILE.(n-1) to FILE.n
    (the oldest, FILE.backups, is replaced) and FILE to FILE.1, then starts a new FILE; with
    no backups the file starts over empty. A record longer than max_bytes on its own is
    written whole to a fresh file. max_bytes 0 never rotates.
    """

    def __init__(self, path, max_bytes=DEFAULT_LOG_MAX_BYTES, backups=DEFAULT_LOG_BACKUPS):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self.handle = None
        self.size = 0
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._open()

    def _open(self):
        self.handle = open(self.path, "ab", buffering=0)
        self.size = os.fstat(self.handle.fileno()).st_size

    def write(self, line):
        """Write one record (a line without its newline)."""
        data = line.encode("utf-8") + b"\n"
        if self.max_bytes and self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        self.handle.write(data)
        self.size += len(data)

    def rotate(self):
        self.handle.close()
        try:
            if self.backups:
                for index in range(self.backups - 1, 0, -1):
                    older = "%s.%d" % (self.path, index)
                    if os.path.exists(older):
                        os.rename(older, "%s.%d" % (self.path, index + 1))
                os.rename(self.path, self.path + ".1")
            else:
                os.unlink(self.path)
        except OSError:
            pass   # moved or removed behind our back: a new file all the same
        self.rotations += 1
        self._open()

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None

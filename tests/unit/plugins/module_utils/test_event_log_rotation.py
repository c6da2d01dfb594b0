# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitor's events.jsonl rotates by size: FILE -> FILE.1 -> ... -> FILE.<backups>.

Written well past a small limit: the expected files exist (and no more), none is over the
limit, every line is a whole JSON record, the files read oldest to newest hold one
contiguous run of records ending with the last one written (nothing lost but what fell off
the oldest backup), and a file was rotated only when the next record did not fit.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import types

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor_events


def record(seq):
    # Varying lengths, so that the files do not all end at the same offset.
    return json.dumps({"seq": seq, "rule": "r" * (seq * 7 % 53)}, sort_keys=True)


def read_lines(path):
    with open(path, "rb") as handle:
        data = handle.read()
    assert data == b"" or data.endswith(b"\n"), "%s ends inside a record" % path
    return [json.loads(line.decode()) for line in data.splitlines()]


def files_oldest_first(path, backups):
    names = ["%s.%d" % (path, n) for n in range(backups, 0, -1)] + [path]
    return [name for name in names if os.path.exists(name)]


def log_dir_listing(tmp_path):
    return sorted(os.listdir(str(tmp_path)))


def check_rotated(path, max_bytes, backups, written):
    """The invariants after writing records 0..written-1; returns the sequence kept."""
    files = files_oldest_first(path, backups)
    kept = []
    per_file = []
    for name in files:
        assert os.path.getsize(name) <= max_bytes, name
        lines = read_lines(name)
        assert lines, "%s is empty" % name
        per_file.append(lines)
        kept.extend(line["seq"] for line in lines)
    # One contiguous run ending with the last record written: none split, none lost inside.
    assert kept == list(range(kept[0], written))
    # Each rotated file was full: the first record of the next newer file did not fit in it.
    for older, newer, lines in zip(files, files[1:], per_file[1:]):
        first = len(record(lines[0]["seq"])) + 1
        assert os.path.getsize(older) + first > max_bytes, (older, newer)
    return kept


def test_rotation_keeps_the_configured_backups(tmp_path):
    path = str(tmp_path / "events.jsonl")
    log = _monitor_events.EventLog(path, max_bytes=1000, backups=3)
    try:
        for seq in range(400):
            log.write(record(seq))
    finally:
        log.close()
    assert log_dir_listing(tmp_path) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2",
                                         "events.jsonl.3"]
    kept = check_rotated(path, 1000, 3, 400)
    assert kept[0] > 0   # the oldest fell off: only `backups` rotated files are kept
    # Everything the four files can hold is kept: the oldest file was full too.
    assert log.rotations > 3
    assert sum(os.path.getsize(p) for p in files_oldest_first(path, 3)) > 3 * (1000 - 64)


def test_rotation_before_the_limit_is_reached_loses_nothing(tmp_path):
    path = str(tmp_path / "events.jsonl")
    log = _monitor_events.EventLog(path, max_bytes=500, backups=5)
    try:
        for seq in range(25):
            log.write(record(seq))
    finally:
        log.close()
    kept = check_rotated(path, 500, 5, 25)
    assert kept == list(range(25))
    assert "events.jsonl.6" not in log_dir_listing(tmp_path)


def test_no_backups_starts_the_file_over(tmp_path):
    path = str(tmp_path / "events.jsonl")
    log = _monitor_events.EventLog(path, max_bytes=300, backups=0)
    try:
        for seq in range(100):
            log.write(record(seq))
    finally:
        log.close()
    assert log_dir_listing(tmp_path) == ["events.jsonl"]
    assert check_rotated(path, 300, 0, 100)[-1] == 99


def test_a_record_longer_than_the_limit_is_written_whole(tmp_path):
    path = str(tmp_path / "events.jsonl")
    big = json.dumps({"seq": 1, "rule": "x" * 400})
    log = _monitor_events.EventLog(path, max_bytes=100, backups=2)
    try:
        log.write(json.dumps({"seq": 0}))
        log.write(big)
        log.write(json.dumps({"seq": 2}))
    finally:
        log.close()
    assert [r["seq"] for r in read_lines(path + ".2")] == [0]
    assert read_lines(path + ".1") == [json.loads(big)]
    assert [r["seq"] for r in read_lines(path)] == [2]


def test_reopen_counts_what_is_already_there(tmp_path):
    """A restarted monitor appends, and rotates at the same size as if it had not stopped."""
    path = str(tmp_path / "events.jsonl")
    log = _monitor_events.EventLog(path, max_bytes=400, backups=2)
    for seq in range(5):
        log.write(record(seq))
    log.close()
    size = os.path.getsize(path)
    log = _monitor_events.EventLog(path, max_bytes=400, backups=2)
    try:
        assert log.size == size
        for seq in range(5, 60):
            log.write(record(seq))
    finally:
        log.close()
    check_rotated(path, 400, 2, 60)


def test_zero_max_bytes_never_rotates(tmp_path):
    path = str(tmp_path / "events.jsonl")
    log = _monitor_events.EventLog(path, max_bytes=0, backups=5)
    try:
        for seq in range(200):
            log.write(record(seq))
    finally:
        log.close()
    assert log_dir_listing(tmp_path) == ["events.jsonl"]
    assert [r["seq"] for r in read_lines(path)] == list(range(200))
    assert log.rotations == 0


def test_file_removed_behind_its_back(tmp_path):
    path = str(tmp_path / "events.jsonl")
    log = _monitor_events.EventLog(path, max_bytes=200, backups=1)
    try:
        log.write(record(0))
        os.unlink(path)
        for seq in range(1, 30):
            log.write(record(seq))
    finally:
        log.close()
    assert read_lines(path)[-1]["seq"] == 29


def test_options_and_their_defaults():
    options = _monitor.parse_args([])
    assert options.log_max_bytes == 100 * 1024 * 1024 and options.log_backups == 5
    options = _monitor.parse_args(["--log-max-bytes", "4096", "--log-backups", "2"])
    assert (options.log_max_bytes, options.log_backups) == (4096, 2)
    for bad in (["--log-max-bytes", "-1"], ["--log-backups", "-2"], ["--log-backups", "x"]):
        with pytest.raises(SystemExit):
            _monitor.parse_args(bad)


class FakeRing:
    def __init__(self, raws):
        self.raws = list(raws)

    def drain(self, limit):
        out, self.raws = self.raws[:limit], self.raws[limit:]
        return out


def test_the_monitor_writes_events_through_the_rotating_log(tmp_path):
    """_drain_events writes whole records into the rotating file, none lost."""
    path = str(tmp_path / "events.jsonl")
    options = _monitor.parse_args(["--log-file", path, "--log-max-bytes", "4000",
                                   "--log-backups", "4", "--no-events-stdout",
                                   "--metrics-port", "-1"])
    monitor = _monitor.Monitor(options, out=open(os.devnull, "w"))
    try:
        monitor.events = _monitor_events.EventLog(path, options.log_max_bytes, options.log_backups)
        raws = [bytes(_maps.LogEvent(timestamp_ns=seq, src_ip=_maps.ip_to_u32("198.18.1.1"),
                                     dst_ip=_maps.ip_to_u32("198.18.1.2"), src_port=seq,
                                     dst_port=80, protocol=6, action=_abi.MS_ACTION_LOG,
                                     policy_id=1, ifindex=3))
                for seq in range(40)]
        monitor.plane = types.SimpleNamespace(
            up=True, ring=FakeRing(raws),
            maps=types.SimpleNamespace(config=lambda: None))
        monitor._rule_names = lambda config: {1: "web-log"}
        monitor.ifnames = {3: "veth0"}
        monitor._drain_events()
        monitor.events.close()
        assert monitor.events_written == 40
        lines = []
        for name in files_oldest_first(path, 4):
            assert os.path.getsize(name) <= 4000
            lines.extend(read_lines(name))
        assert [line["src_port"] for line in lines] == list(range(40))
        assert set(line["rule"] for line in lines) == {"web-log"}
        assert os.path.exists(path + ".1")
    finally:
        monitor.out.close()
        if monitor.events is not None:
            monitor.events.close()

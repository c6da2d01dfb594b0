# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""microseg-monitor: the seed's Monitor Service, one long-running process per host.

Every interval it recounts the session map (total and SYN_SENT) and writes map_pressure_map,
so the data plane's pressure levels and SYN-flood guard act on real numbers, and deletes
sessions idle past their timeout. Between ticks it consumes LOG events from the ring buffer
(JSON lines, _monitor_events), attaches the pinned programs to new interfaces that match the
selection (netlink link events, _autoattach), and serves Prometheus metrics from a thread
(_monitor_metrics). This file is the lifecycle and the recount/expiry tick.

It reads and writes the maps through the same module_utils as the modules; the executable
files/microseg-monitor only puts them on sys.path and calls main().
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _autoattach
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _converge
from ansible_collections.ebpf.microseg.plugins.module_utils import _endpoints
from ansible_collections.ebpf.microseg.plugins.module_utils import _facts
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor_events
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor_metrics
from ansible_collections.ebpf.microseg.plugins.module_utils import _netlink
from ansible_collections.ebpf.microseg.plugins.module_utils import _ringbuf
from ansible_collections.ebpf.microseg.plugins.module_utils import _sessions

DEFAULT_METRICS_PORT = 9466
EVENTS_PER_WAKEUP = 4096      # bounds memory: the ring itself bounds what is pending


def pressure_level(total, config):
    """The level the data plane derives from total_sessions (same thresholds)."""
    if not config or not config.pressure_warn_sessions:
        return _abi.PRESSURE_NORMAL
    if total >= config.pressure_crit_sessions:
        return _abi.PRESSURE_CRITICAL
    if total >= config.pressure_warn_sessions:
        return _abi.PRESSURE_WARNING
    return _abi.PRESSURE_NORMAL


# ---- the pinned data plane, reopened when it goes away and comes back -------------------

class DataPlane:
    """Open fds on the pins; knows when the pins were removed or replaced."""

    def __init__(self, pin_path):
        self.pin_path = pin_path
        self.maps = None
        self.ring = None
        self.programs = {}
        self.program_ids = {}
        self.config_map_id = None
        self.map_ids = {}
        self.replaced = []
        self.checked_at = 0.0

    @property
    def up(self):
        return self.maps is not None

    def _pinned_config_id(self):
        return _maps.pinned_map_ids(self.pin_path, ["config_map"]).get("config_map")

    def open(self):
        """Open everything; False (and nothing held) when the pins are not there."""
        self.close()
        config_id = self._pinned_config_id()
        if config_id is None:
            return False
        try:
            self.maps = _maps.PinnedMaps(self.pin_path)
            self.ring = _ringbuf.RingBuffer(self.maps.fd("log_events"),
                                            self.maps.info("log_events")["max_entries"])
        except OSError:
            self.close()
            return False
        # Maps without pinned programs (a bare datapath) still get everything but attach.
        self.program_ids = {}
        self.refresh_programs()
        self.config_map_id = config_id
        self.map_ids = dict((name, self.maps.map_id(name)) for name in self.maps.fds)
        self.replaced = []
        self.checked_at = time.monotonic()
        return True

    def _pinned_map_ids(self):
        return _maps.pinned_map_ids(self.pin_path, self.map_ids)

    def current(self):
        """Whether the pins still name every map we hold. state=absent removes them; a
        re-create makes new ones; a resize (microseg_program) replaces one map: then
        `replaced` names it, and the caller reopens them all."""
        if not self.up:
            return False
        # The loop wakes on every event and link change: look at the pins at most 4x a second.
        now = time.monotonic()
        if now - self.checked_at < 0.25:
            return True
        self.checked_at = now
        pinned = self._pinned_map_ids()
        if pinned == self.map_ids:
            return True
        self.replaced = sorted(name for name in self.map_ids
                               if pinned.get(name) != self.map_ids[name])
        return False

    def refresh_programs(self):
        """Reopen the pinned programs when microseg_program replaced them, so that
        auto-attach never puts an old program on a new interface. True if replaced."""
        try:
            pinned = dict((fn, info["id"]) for fn, info in
                          _loader.pinned_program_info(self.pin_path).items())
        except OSError:
            return False
        if pinned == self.program_ids:
            return False
        for fd in self.programs.values():
            bpf.close(fd)
        self.programs = {}
        self.program_ids = {}
        try:
            self.programs = _loader.open_pinned_programs(self.pin_path)
            self.program_ids = pinned
        except OSError:
            self.programs = {}
        return True

    def close(self):
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        for fd in self.programs.values():
            bpf.close(fd)
        self.programs = {}
        self.program_ids = {}
        self.config_map_id = None
        self.map_ids = {}


class Monitor:

    def __init__(self, options, out=None, err=None):
        self.options = options
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.plane = DataPlane(options.pin_path)
        self.timeouts = _sessions.timeouts_ns(options.timeouts)
        self.endpoint_usage = {}
        self.learned = None      # unknown until the first tick: a previous run's may linger
        self.namespaces = None
        self.stopping = False
        self.metrics = None
        self.events = None
        self.rule_names = {}
        self.rule_names_epoch = None
        self.ifnames = {}
        self.expired = dict((name, 0) for name in _sessions.DEFAULT_TIMEOUTS)
        self.events_written = 0
        self.last_sweep = {"total": 0, "syn_sent": 0, "expired": 0, "expired_by_class": {}}
        self.last_full_count = 0.0
        self.map_counts = {}
        self.tick_seconds = 0.0
        self.events_ipr = None
        self.ipr = None
        self.notified = False
        self.attach = None

    # -- lifecycle ------------------------------------------------------------------------
    def say(self, text):
        self.err.write("microseg-monitor: %s\n" % text)
        self.err.flush()

    def stop(self, *_args):
        self.stopping = True

    def run(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        opts = self.options
        if opts.log_file:
            self.events = _monitor_events.EventLog(opts.log_file, opts.log_max_bytes, opts.log_backups)
        if opts.metrics_port >= 0:
            self.metrics = _monitor_metrics.MetricsServer(opts.metrics_address, opts.metrics_port)
            self.say("metrics on http://%s:%d/metrics" % (opts.metrics_address, self.metrics.port))
        if opts.pid_file:
            # /run is empty after a reboot: the pid file's directory may not exist yet.
            pid_dir = os.path.dirname(os.path.abspath(opts.pid_file))
            if not os.path.isdir(pid_dir):
                os.makedirs(pid_dir, 0o755)
            with open(opts.pid_file, "w") as handle:
                handle.write("%d\n" % os.getpid())
        if _netlink.HAS_PYROUTE2:
            self.ipr = _netlink.open_route()
            if opts.attach:
                from pyroute2.netlink.rtnl import RTMGRP_LINK  # pylint: disable=import-outside-toplevel
                self.events_ipr = _netlink.open_route()
                self.events_ipr.bind(groups=RTMGRP_LINK)
        elif opts.attach:
            self.say("pyroute2 is missing: auto-attach disabled")
        self.attach = _autoattach.AutoAttach(opts, self.plane, self.ipr, self.events_ipr,
                                             self.ifnames, self.say)
        try:
            self._loop()
        finally:
            self.plane.close()
            for handle in (self.events_ipr, self.ipr):
                if handle is not None:
                    handle.close()
            if self.metrics:
                self.metrics.close()
            if self.events:
                self.events.close()
            if opts.pid_file and os.path.exists(opts.pid_file):
                os.unlink(opts.pid_file)
            self.say("stopped")
        return 0

    def _loop(self):
        waiting_said = False
        next_tick = 0.0
        while not self.stopping:
            if not self.plane.current():
                if self.plane.up and self.plane.replaced and self.plane.replaced != \
                        sorted(self.plane.map_ids):
                    self.say("pinned maps replaced (%s): reopening the data plane"
                             % ", ".join(self.plane.replaced))
                elif self.plane.up:
                    self.say("the pinned maps under %s went away; waiting for them"
                             % self.options.pin_path)
                self.map_counts = {}     # the replaced maps' sizes, counted afresh
                if not self.plane.open():
                    if not waiting_said:
                        self.say("waiting for pinned maps under %s" % self.options.pin_path)
                        waiting_said = True
                        self._notify_ready()    # nothing to attach yet: do not hold up boot
                    self._publish()
                    self._sleep(min(1.0, self.options.interval))
                    continue
                waiting_said = False
                self.say("opened the data plane under %s (generation %d)"
                         % (self.options.pin_path, self.plane.maps.config().policy_epoch))
                self.attach.reconcile()
                self._notify_ready()
                next_tick = 0.0
            now = time.monotonic()
            if now >= next_tick:
                self._tick()
                # A pass over a million sessions takes about a second: stretch the
                # interval so the monitor stays near a fifth of one core at most.
                next_tick = time.monotonic() + max(self.options.interval, 4 * self.tick_seconds)
                if self.options.once:
                    self._drain_events()
                    return
            self._wait(max(0.0, min(next_tick - time.monotonic(), 0.5)))

    def _notify_ready(self):
        """sd_notify(READY=1) once, for a Type=notify unit (no libsystemd needed)."""
        address = os.environ.get("NOTIFY_SOCKET")
        if self.notified or not address:
            return
        self.notified = True
        if address.startswith("@"):
            address = "\0" + address[1:]     # abstract socket namespace
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(address)
            sock.sendall(b"READY=1")
        except OSError as exc:
            self.say("could not tell systemd it is ready: %s" % exc)
        finally:
            sock.close()

    def _sleep(self, seconds):
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            self._wait(min(0.2, deadline - time.monotonic()))

    def _wait(self, timeout):
        """Sleep until a ring buffer record, a link event or the timeout."""
        watched = []
        if self.plane.up:
            watched.append(self.plane.maps.fd("log_events"))
        if self.events_ipr is not None:
            watched.append(self.events_ipr.fileno())
        try:
            ready, _w, _x = select.select(watched, [], [], timeout) if watched else \
                (time.sleep(timeout) or ([], None, None))
        except InterruptedError:
            return
        except (OSError, ValueError):
            # A map fd became unusable under us; the next loop turn reopens.
            return
        if self.plane.up and self.plane.maps.fd("log_events") in ready:
            self._drain_events()
        if self.events_ipr is not None and self.events_ipr.fileno() in ready:
            self.attach.link_events()

    # -- recount, expiry, pressure ----------------------------------------------------------
    def _tick(self):
        started = time.monotonic()
        maps = self.plane.maps
        if self.plane.refresh_programs():
            self.say("pinned programs changed: ids %s" % sorted(self.plane.program_ids.values()))
        try:
            now_ns = time.monotonic_ns()
            sweep = _sessions.sweep(maps, now_ns, self.timeouts, delete=self.options.expire)
            config = maps.config()
            pressure = maps.pressure() or _maps.MapPressure()
            pressure.total_sessions = sweep["total"]
            pressure.syn_sent_count = sweep["syn_sent"]
            pressure.pressure_level = pressure_level(sweep["total"], config)
            pressure.last_check = time.monotonic_ns()
            maps.write_pressure(pressure)
            live = None
            if self.ipr is not None:
                seen = set(self.endpoint_usage) | set(sweep["by_endpoint"])
                if any(index not in self.ifnames for index in seen):
                    self._refresh_ifnames()
                live = set(self.ifnames)
            self.endpoint_usage = _sessions.rewrite_endpoint_usage(
                maps, sweep["by_endpoint"], live)
            self._learn_endpoints(config)
        except OSError as exc:
            self.say("tick failed: %s" % exc)
            self.plane.close()
            return
        for klass, count in sweep["expired_by_class"].items():
            if self.options.expire:
                self.expired[klass] = self.expired.get(klass, 0) + count
        if sweep["expired"]:
            self.say("expired %d sessions %s" % (sweep["expired"], sweep["expired_by_class"]))
        self.last_sweep = sweep
        self.tick_seconds = time.monotonic() - started
        self._publish(config, pressure)

    def _publish(self, config=None, pressure=None):
        if self.metrics is None:
            return
        if not self.plane.up:
            self.metrics.publish(_monitor_metrics.render_metrics({"events_written": self.events_written}))
            return
        maps = self.plane.maps
        now = time.monotonic()
        # Counting the policy maps costs a pass over up to 100k entries: not every second.
        if now - self.last_full_count >= self.options.map_count_interval or not self.map_counts:
            self.map_counts = {}
            for spec in _maps.MAP_SPECS:
                info = maps.info(spec.name)
                entry = {"max_entries": info["max_entries"]}
                if spec.key is not None and spec.map_type not in _facts.FIXED_SIZE_TYPES and \
                        spec.name != "session_map":
                    entry["entries"] = maps.count(spec.name)
                self.map_counts[spec.name] = entry
            self.last_full_count = now
        counts = dict((name, dict(entry)) for name, entry in self.map_counts.items())
        counts["session_map"]["entries"] = self.last_sweep["total"]
        snapshot = {
            "up": True,
            "stats": maps.stats(),
            "maps": counts,
            "sweep": self.last_sweep,
            "pressure_level": pressure.pressure_level if pressure else 0,
            "expired": self.expired,
            "policy_generation": config.policy_epoch if config else 0,
            "rules": self._rules(config),
            "attached": len(_facts.attachment(self.ipr, self.options.pin_path)) if self.ipr is not None else 0,
            "events_written": self.events_written,
            "tick_seconds": self.tick_seconds,
            "endpoints": self._endpoint_rows(config),
        }
        self.metrics.publish(_monitor_metrics.render_metrics(snapshot))

    def _learn_endpoints(self, config):
        """Keep endpoint_map's learned entries equal to what the containers' namespaces
        say now (microseg_program learn_endpoints); forget them when learning is off."""
        learning = bool(config and config.flags & _abi.MS_CFG_LEARN_ENDPOINTS)
        if self.ipr is None or not (learning or self.learned is None or self.learned):
            return
        if self.namespaces is None:
            self.namespaces = _endpoints.NamespaceFinder(self.ipr)
        learned = _endpoints.learn(self.ipr, self.namespaces, None) if learning else {}
        try:
            with _converge.HostLock(self.options.pin_path, timeout=0):
                changes = _endpoints.write_learned(self.plane.maps, learned)
        except _converge.HostLockBusy:
            return       # a module run holds the maps: learn again next tick
        if changes:
            self.say("endpoints learned: %s" % ", ".join(
                "%s=%s" % (self.ifnames.get(index, index), _maps.u32_to_ip(value.ip))
                for index, value in sorted(learned.items())) if learned else "none")
        self.learned = learned

    def _endpoint_rows(self, config):
        """Per endpoint: its interface name, usage as last recounted, and its quotas."""
        rows = []
        for ifindex, usage in sorted(self.endpoint_usage.items()):
            rows.append({
                "interface": self.ifnames.get(ifindex, str(ifindex)),
                "sessions": usage.sessions, "half_open": usage.half_open,
                "syn_quota_drops": usage.syn_quota_drops,
                "degraded_flows": usage.degraded_flows,
                "session_quota": config.endpoint_session_quota if config else 0,
                "half_open_quota": config.endpoint_half_open_quota if config else 0,
            })
        return rows

    def _rules(self, config):
        names = self._rule_names(config)
        out = []
        for key, value in self.plane.maps.items("rule_stats_map"):
            out.append({"name": names.get(key.value), "policy_id": key.value, "hits": value.hits})
        out.sort(key=lambda rule: (-rule["hits"], rule["policy_id"]))
        return out[:self.options.metrics_rules]

    def _rule_names(self, config):
        epoch = config.policy_epoch if config else None
        if epoch != self.rule_names_epoch:
            # Re-read only when a converge switched generations.
            self.rule_names = _facts.rule_names(self.options.pin_path, config)
            self.rule_names_epoch = epoch
        return self.rule_names

    # -- LOG events -------------------------------------------------------------------------
    def _drain_events(self):
        if not self.plane.up:
            return
        records = self.plane.ring.drain(limit=EVENTS_PER_WAKEUP)
        if not records:
            return
        wall_of = _facts.monotonic_to_wall()
        names = self._rule_names(self.plane.maps.config())
        for raw in records:
            event = _maps.LogEvent.unpack(bytes(raw[:ctypes.sizeof(_maps.LogEvent)]))
            if event.ifindex not in self.ifnames and self.ipr is not None:
                self._refresh_ifnames()
            line = json.dumps(_monitor_events.event_record(event, names, self.ifnames, wall_of), sort_keys=True)
            if self.events is not None:
                self.events.write(line)
            if self.options.events_to_stdout:
                self.out.write(line + "\n")
            self.events_written += 1
        self.out.flush()

    def _refresh_ifnames(self):
        # In place: the auto-attach shares this dict.
        self.ifnames.clear()
        self.ifnames.update((link["index"], link["name"]) for link in _netlink.list_links(self.ipr))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="microseg-monitor",
        description="Keep the microseg data plane's pressure counters true, expire idle "
                    "sessions, write LOG events as JSON lines, serve Prometheus metrics and "
                    "attach the program to new interfaces.")
    parser.add_argument("--pin-path", default=_maps.DEFAULT_PIN_PATH)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between recount/expiry passes (default 1); stretched to "
                             "4x the pass time on very large session tables")
    for name, seconds in sorted(_sessions.DEFAULT_TIMEOUTS.items()):
        parser.add_argument("--timeout-%s" % name.replace("_", "-"), type=float, default=seconds,
                            dest="timeout_" + name,
                            help="idle seconds before a %s session is deleted (default %s)"
                                 % (name.replace("_", " "), seconds))
    parser.add_argument("--no-expire", dest="expire", action="store_false",
                        help="count sessions but delete none")
    parser.add_argument("--log-file", default="/var/log/microseg/events.jsonl",
                        help="LOG events as JSON lines ('' disables)")
    parser.add_argument("--log-max-bytes", type=int, default=_monitor_events.DEFAULT_LOG_MAX_BYTES,
                        help="rotate the log file before it grows past this many bytes; "
                             "0 never rotates (default %d)" % _monitor_events.DEFAULT_LOG_MAX_BYTES)
    parser.add_argument("--log-backups", type=int, default=_monitor_events.DEFAULT_LOG_BACKUPS,
                        help="rotated files kept, FILE.1 the newest; 0 keeps none "
                             "(default %d)" % _monitor_events.DEFAULT_LOG_BACKUPS)
    parser.add_argument("--no-events-stdout", dest="events_to_stdout", action="store_false")
    parser.add_argument("--metrics-address", default="127.0.0.1")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help="0 picks a free port, -1 disables (default %d)" % DEFAULT_METRICS_PORT)
    parser.add_argument("--metrics-rules", type=int, default=100,
                        help="per-rule hit series to export, most hits first")
    parser.add_argument("--map-count-interval", type=float, default=10.0,
                        help="seconds between entry counts of the policy maps")
    parser.add_argument("--interface", dest="interfaces", action="append", default=[],
                        help="name or glob to attach to (repeatable); default: what the last "
                             "microseg_program run selected")
    parser.add_argument("--bridge", help="attach to every port of this bridge")
    parser.add_argument("--hook", dest="hooks", action="append", choices=["ingress", "egress"])
    parser.add_argument("--no-attach", dest="attach", action="store_false",
                        help="do not watch link events")
    parser.add_argument("--pid-file")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    options = parser.parse_args(argv)
    options.hooks = options.hooks or ["ingress", "egress"]
    options.timeouts = dict((name, getattr(options, "timeout_" + name))
                            for name in _sessions.DEFAULT_TIMEOUTS)
    if options.interval <= 0:
        parser.error("--interval must be positive")
    if options.log_max_bytes < 0:
        parser.error("--log-max-bytes must be 0 or more")
    if options.log_backups < 0:
        parser.error("--log-backups must be 0 or more")
    return options


def main(argv=None):
    options = parse_args(argv)
    return Monitor(options).run()

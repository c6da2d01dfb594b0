# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitor's Prometheus side: the text exposition of one snapshot and the server thread
that serves the latest one."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import socket
import threading


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(snapshot):
    """Prometheus text exposition (version 0.0.4) of one snapshot."""
    lines = []

    def family(name, kind, help_text, samples):
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            if labels:
                text = ",".join('%s="%s"' % (k, _label(v)) for k, v in sorted(labels.items()))
                lines.append("%s{%s} %s" % (name, text, value))
            else:
                lines.append("%s %s" % (name, value))

    family("microseg_up", "gauge", "1 when the pinned maps are open.",
           [({}, 1 if snapshot.get("up") else 0)])
    if snapshot.get("up"):
        family("microseg_datapath_total", "counter",
               "Data plane counters summed over CPUs (stats_map).",
               [({"counter": name}, value) for name, value in sorted(snapshot["stats"].items())])
        family("microseg_map_entries", "gauge", "Entries in each keyed map.",
               [({"map": name}, entry["entries"]) for name, entry in sorted(snapshot["maps"].items())
                if "entries" in entry])
        family("microseg_map_max_entries", "gauge", "Capacity of each map.",
               [({"map": name}, entry["max_entries"])
                for name, entry in sorted(snapshot["maps"].items())])
        family("microseg_map_fill_ratio", "gauge", "entries / max_entries.",
               [({"map": name}, round(entry["entries"] / float(entry["max_entries"]), 6))
                for name, entry in sorted(snapshot["maps"].items()) if "entries" in entry])
        family("microseg_sessions", "gauge", "Live sessions at the last recount.",
               [({}, snapshot["sweep"]["total"])])
        family("microseg_syn_sent_sessions", "gauge", "Sessions in SYN_SENT at the last recount.",
               [({}, snapshot["sweep"]["syn_sent"])])
        family("microseg_pressure_level", "gauge", "0 normal, 1 warning, 2 critical.",
               [({}, snapshot["pressure_level"])])
        family("microseg_expired_sessions_total", "counter",
               "Sessions the monitor deleted after their idle timeout.",
               [({"class": name}, value) for name, value in sorted(snapshot["expired"].items())])
        family("microseg_policy_generation", "gauge", "Active policy generation.",
               [({}, snapshot["policy_generation"])])
        family("microseg_rule_hits_total", "counter", "New flows decided by each rule.",
               [({"rule": rule["name"] or "", "policy_id": rule["policy_id"]}, rule["hits"])
                for rule in snapshot["rules"]])
        family("microseg_attached_interfaces", "gauge", "Interfaces carrying the program.",
               [({}, snapshot["attached"])])
        endpoints = snapshot.get("endpoints") or []
        for name, kind, field, help_text in (
                ("microseg_endpoint_sessions", "gauge", "sessions",
                 "Sessions of each endpoint (host-side interface) at the last recount."),
                ("microseg_endpoint_half_open", "gauge", "half_open",
                 "TCP sessions in SYN_SENT of each endpoint at the last recount."),
                ("microseg_endpoint_session_quota", "gauge", "session_quota",
                 "Sessions an endpoint may hold before its new flows degrade (0: none)."),
                ("microseg_endpoint_half_open_quota", "gauge", "half_open_quota",
                 "SYN_SENT sessions an endpoint may hold before its SYNs drop (0: none)."),
                ("microseg_endpoint_syn_quota_drops_total", "counter", "syn_quota_drops",
                 "SYNs dropped over the endpoint's half-open quota."),
                ("microseg_endpoint_degraded_flows_total", "counter", "degraded_flows",
                 "New flows degraded over the endpoint's session quota.")):
            family(name, kind, help_text,
                   [({"interface": row["interface"]}, row[field]) for row in endpoints])
    family("microseg_log_events_written_total", "counter", "LOG events written as JSON lines.",
           [({}, snapshot.get("events_written", 0))])
    family("microseg_monitor_tick_seconds", "gauge", "Duration of the last recount/expiry pass.",
           [({}, round(snapshot.get("tick_seconds", 0.0), 6))])
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A tiny HTTP server in a thread; it only ever serves the latest rendered text."""

    def __init__(self, address, port):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.text = render_metrics({})
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self.thread.start()

    def publish(self, text):
        with self.lock:
            self.text = text

    def _serve(self):
        while not self.stopping:
            try:
                conn, _peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn.settimeout(2)
                request = conn.recv(4096).decode("latin-1")
                path = request.split(" ", 2)[1] if request.count(" ") >= 2 else "/"
                if path.split("?")[0] in ("/metrics", "/"):
                    with self.lock:
                        body = self.text.encode()
                    head = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                            "charset=utf-8\r\nContent-Length: %d\r\n\r\n" % len(body))
                else:
                    body = b"not found\n"
                    head = "HTTP/1.0 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
                conn.sendall(head.encode() + body)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self.stopping = True
        self.sock.close()
        self.thread.join(2)

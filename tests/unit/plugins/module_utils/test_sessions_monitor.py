# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure parts of the session scan and the monitor: timeout classes, the raw-record picker,
pressure levels, Prometheus rendering, LOG event records."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes

from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor_events
from ansible_collections.ebpf.microseg.plugins.module_utils import _monitor_metrics
from ansible_collections.ebpf.microseg.plugins.module_utils import _sessions


def test_timeout_classes_cover_every_tcp_state():
    classes = dict((name, _sessions.timeout_class(6, _abi.TCP_STATE[name]))
                   for name in _abi.TCP_STATES)
    assert classes["TIME_WAIT"] == classes["CLOSE"] == "tcp_closed"
    assert classes["SYN_SENT"] == classes["SYN_RECV"] == "tcp_syn"
    assert classes["ESTABLISHED"] == classes["NONE"] == "tcp_established"
    for name in ("FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"):
        assert classes[name] == "tcp_closing"
    assert _sessions.timeout_class(17, 0) == "udp"
    assert _sessions.timeout_class(1, 0) == "icmp"
    assert _sessions.timeout_class(47, 0) == "other"
    assert set(classes.values()) | {"udp", "icmp", "other"} == set(_sessions.DEFAULT_TIMEOUTS)


def test_timeouts_override_only_what_is_given():
    got = _sessions.timeouts_ns({"udp": 2.5})
    assert got["udp"] == 2500000000
    assert got["tcp_established"] == _sessions.DEFAULT_TIMEOUTS["tcp_established"] * 10 ** 9


@given(st.integers(0, 2 ** 64 - 1), st.integers(0, 255), st.integers(0, 255),
       st.integers(0, 2 ** 32 - 1), st.integers(0, 255))
def test_field_picker_reads_what_ctypes_wrote(last_seen, action, state, policy_id, protocol):
    value = _maps.SessionValue(last_seen=last_seen, action=action, state=state,
                               policy_id=policy_id, packets=7, flags=0xffff)
    key = _maps.SessionKey(protocol=protocol, src_ip=0xffffffff, dst_port=0xffff)
    picker, order = _sessions.field_picker(_maps.SessionValue, ("state", "last_seen", "action"))
    assert order == ["last_seen", "action", "state"]
    assert picker.size == ctypes.sizeof(_maps.SessionValue)
    assert picker.unpack(value.pack()) == (last_seen, action, state)
    key_picker, _order = _sessions.field_picker(_maps.SessionKey, ("protocol",))
    assert key_picker.unpack(key.pack()) == (protocol,)


@given(st.integers(0, 10 ** 7), st.integers(0, 10 ** 6), st.integers(0, 10 ** 6))
def test_pressure_level_matches_the_data_plane_thresholds(total, warn, extra):
    config = _maps.MicrosegConfig(pressure_warn_sessions=warn,
                                  pressure_crit_sessions=warn + extra)
    level = _monitor.pressure_level(total, config)
    if not warn:
        assert level == 0
    elif total >= warn + extra:
        assert level == 2
    elif total >= warn:
        assert level == 1
    else:
        assert level == 0


def test_metrics_render_parses_with_a_prometheus_parser():
    snapshot = {
        "up": True, "stats": dict((name, i) for i, name in enumerate(_abi.STAT_NAMES)),
        "maps": {"session_map": {"entries": 10, "max_entries": 100},
                 "stats_map": {"max_entries": 24}},
        "sweep": {"total": 10, "syn_sent": 2}, "pressure_level": 1,
        "expired": {"udp": 3}, "policy_generation": 4,
        "rules": [{"name": 'quote"and\\slash', "policy_id": 9, "hits": 5}],
        "attached": 2, "events_written": 1, "tick_seconds": 0.01,
    }
    families = dict((f.name, f) for f in
                    text_string_to_metric_families(_monitor_metrics.render_metrics(snapshot)))
    assert families["microseg_up"].samples[0].value == 1
    assert families["microseg_map_fill_ratio"].samples[0].value == 0.1
    rule = families["microseg_rule_hits"].samples[0]
    assert rule.labels == {"rule": 'quote"and\\slash', "policy_id": "9"} and rule.value == 5
    down = dict((f.name, f) for f in text_string_to_metric_families(_monitor_metrics.render_metrics({})))
    assert down["microseg_up"].samples[0].value == 0
    assert "microseg_sessions" not in down


def test_event_record_names_rule_ports_and_interface():
    event = _maps.LogEvent(timestamp_ns=10 ** 9, src_ip=_maps.ip_to_u32("198.18.1.1"),
                           dst_ip=_maps.ip_to_u32("198.18.1.2"), src_port=40000, dst_port=80,
                           protocol=6, direction=_abi.MS_DIR_INGRESS, action=_abi.MS_ACTION_LOG,
                           reason=1, policy_id=9, ifindex=3, policy_ver=2)
    record = _monitor_events.event_record(event, {9: "web-http"}, {3: "veth0"}, lambda ns: ns / 1e9)
    assert record["rule"] == "web-http" and record["verdict"] == "log"
    assert (record["src"], record["src_port"], record["dst"], record["dst_port"]) == \
        ("198.18.1.1", 40000, "198.18.1.2", 80)
    assert record["direction"] == "ingress" and record["interface"] == "veth0"
    assert record["reason"] == "reevaluate" and record["time"].startswith("1970-01-01T00:00:01")
    icmp = _maps.LogEvent(protocol=1, policy_id=1)
    assert "src_port" not in _monitor_events.event_record(icmp, {}, {}, lambda ns: 0)

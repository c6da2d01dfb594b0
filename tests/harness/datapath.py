# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real microseg program, compiled into a private pin directory, driven by PROG_TEST_RUN."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import time
import uuid

from ansible_collections.ebpf.microseg.plugins.module_utils import _abi
from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.tests.harness import bpf_syscall_extra as bpfx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPF_DIR = os.path.join(REPO, "files", "bpf")

TC_ACT_OK = 0
TC_ACT_SHOT = 2

SMALL_SIZES = {
    "policy_map_size": 1024,
    "range_map_size": 1024,
    "session_map_size": 4096,
    "frag_map_size": 256,
    "rule_stats_size": 1024,
    "endpoint_map_size": 64,
    "log_ring_pages": 4,
}


def pin_prefix():
    """Pins of this process start with this: cleanup checks never see other runs' pins."""
    return "mstest_%d_" % os.getpid()


def new_pin_path(tag="dp"):
    bpf.ensure_bpffs("/sys/fs/bpf")
    return "/sys/fs/bpf/%s%s_%s" % (pin_prefix(), tag, uuid.uuid4().hex[:10])


class Datapath:
    """One compiled instance of files/bpf/microseg.bpf.c with its own pinned maps."""

    def __init__(self, sizes=None, pin_path=None, functions=None, defines=()):
        self.sizes = dict(SMALL_SIZES)
        self.sizes.update(sizes or {})
        self.pin_path = pin_path or new_pin_path()
        os.makedirs(self.pin_path)
        self.sources = _loader.read_sources(BPF_DIR)
        self.headers = _kernel_headers.find_kernel_headers()
        self.fds, self.compile_seconds = _loader.compile_and_load(
            self.sources, self.pin_path, self.sizes, self.headers, functions, defines)
        self.maps = _maps.PinnedMaps(self.pin_path)
        self.reset()

    def close(self):
        self.maps.close()
        for fd in self.fds.values():
            bpf.close(fd)
        self.fds = {}
        _loader.remove_pins(self.pin_path)

    # -- running packets -------------------------------------------------------------
    def run(self, frame, direction, repeat=1, ifindex=0):
        function = "microseg_from_container" if direction == "egress" else "microseg_to_container"
        ctx = bpfx.skb_ctx(ifindex=ifindex) if ifindex else None
        retval, _out, duration = bpfx.prog_test_run(self.fds[function], frame, repeat=repeat,
                                                    ctx_in=ctx)
        self.last_duration = duration
        return retval

    def egress(self, frame, **kw):
        """The container sends frame: True if it passes."""
        return self.run(frame, "egress", **kw) == TC_ACT_OK

    def ingress(self, frame, **kw):
        """The container receives frame: True if it passes."""
        return self.run(frame, "ingress", **kw) == TC_ACT_OK

    # -- state -------------------------------------------------------------------------
    def reset(self, **config):
        for name in ("session_map", "policy_map", "ip_range_map", "local_range_map",
                     "port_range_map", "sport_range_map", "rule_stats_map", "frag_map",
                     "endpoint_map", "endpoint_usage_map"):
            self.maps.clear(name)
        self.maps.reset_stats()
        # A fresh recount, as if the monitor ran: the data plane decays a stale count.
        self.maps.write_pressure(_maps.MapPressure(last_check=time.monotonic_ns()))
        self.maps.update("log_rate_map", _maps.U32(0), _maps.LogRate())
        cfg = _maps.MicrosegConfig()
        cfg.session_max = self.sizes["session_map_size"]
        cfg.ipv6_mode = 1
        cfg.other_l3_mode = 1
        cfg.log_rate_per_sec = 100
        self._write_config(cfg, config)

    def config(self):
        return self.maps.config()

    def set_config(self, **fields):
        self._write_config(self.maps.config(), fields)

    def _write_config(self, cfg, fields):
        """cfg with fields set (default_action as {egress, ingress} names), written back."""
        for key, value in fields.items():
            if key == "default_action":
                cfg.default_action[0] = _abi.ACTIONS[value["egress"]]
                cfg.default_action[1] = _abi.ACTIONS[value["ingress"]]
            else:
                setattr(cfg, key, value)
        self.maps.write_config(cfg)

    def bump_epoch(self):
        cfg = self.maps.config()
        cfg.policy_epoch += 1
        self.maps.write_config(cfg)
        return cfg.policy_epoch

    @property
    def policy_set(self):
        return self.maps.config().policy_epoch & 1

    def stats(self):
        return self.maps.stats()

    def sessions(self):
        return list(self.maps.items("session_map"))

    def session(self, local, remote, lport, rport, proto):
        key = _maps.SessionKey(src_ip=_maps.ip_to_u32(local), dst_ip=_maps.ip_to_u32(remote),
                               src_port=lport, dst_port=rport, protocol=proto)
        return self.maps.lookup("session_map", key)

    def pressure(self):
        return self.maps.pressure()

    # -- policy entries (the compiler's output format, written by hand here) -----------
    def add_exact(self, src, dst, sport, dport, proto, direction, action, policy_id=1,
                  policy_set=None):
        key = _maps.PolicyKey(
            src_ip=_maps.ip_to_u32(src), dst_ip=_maps.ip_to_u32(dst), src_port=sport,
            dst_port=dport, protocol=proto, direction=_abi.DIRECTIONS[direction],
            policy_set=self.policy_set if policy_set is None else policy_set)
        value = _maps.PolicyValue(policy_id=policy_id, action=_abi.ACTIONS[action])
        self.maps.update("policy_map", key, value)

    def add_remote_cidr(self, cidr, direction, action=None, policy_id=1, next_class=0,
                        policy_set=None):
        """Stage 1 of the LPM chain: the remote peer's prefix."""
        address, plen = cidr.split("/")
        ps = self.policy_set if policy_set is None else policy_set
        key = _maps.LpmKey(prefixlen=32 + int(plen),
                           class_id=_abi.ms_lpm_root_class(ps, _abi.DIRECTIONS[direction]),
                           ip=_maps.ip_to_u32(address))
        self.maps.update("ip_range_map", key, self._range_value(action, policy_id, next_class))

    def add_local_cidr(self, class_id, cidr, action=None, policy_id=1, next_class=0):
        address, plen = cidr.split("/")
        key = _maps.LpmKey(prefixlen=32 + int(plen), class_id=class_id,
                           ip=_maps.ip_to_u32(address))
        self.maps.update("local_range_map", key, self._range_value(action, policy_id, next_class))

    def add_port_block(self, class_id, proto, port, port_plen, action=None, policy_id=1,
                       next_class=0):
        """Stage 3: protocol + a power-of-two aligned block of destination ports.

        proto=None with port_plen=0 is the class-wide "any protocol" entry.
        """
        key = _maps.PortLpmKey(class_id=class_id)
        if proto is None:
            key.prefixlen = 32
        else:
            key.prefixlen = 32 + 8 + port_plen
            key.protocol = proto
            key.port[0], key.port[1] = _maps.port_to_bytes(port)
        self.maps.update("port_range_map", key, self._range_value(action, policy_id, next_class))

    def add_sport_block(self, class_id, port, port_plen, action, policy_id=1):
        key = _maps.SportLpmKey(prefixlen=32 + port_plen, class_id=class_id)
        key.port[0], key.port[1] = _maps.port_to_bytes(port)
        self.maps.update("sport_range_map", key, self._range_value(action, policy_id, 0))

    @staticmethod
    def _range_value(action, policy_id, next_class):
        value = _maps.RangeValue(policy_id=policy_id, next_class=next_class)
        if action is not None:
            value.action = _abi.ACTIONS[action]
            value.flags = _abi.RANGE_FLAG_FINAL
        return value

    def rule_hits(self, policy_id):
        stats = self.maps.lookup("rule_stats_map", _maps.U32(policy_id))
        return stats.hits if stats else 0

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bpf(2) calls only tests and bench make, on top of the collection's _bpf_syscall.

plugins/module_utils/_bpf_syscall.py ships to the managed hosts with what the product
calls; what is here loads raw bytecode, runs programs with BPF_PROG_TEST_RUN, walks keys
and the kernel's program and map ids. The ctypes mirrors follow the same rules as the
base module's (tests/unit/plugins/module_utils/test_bpf_syscall.py checks their layouts
against the C compiler), and failures raise the base module's BpfError.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import errno

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils._bpf_syscall import (
    BPF_OBJ_NAME_LEN, BpfError, _addr, _decode_name, _in_buf, _obj_name, _out_buf, _u8, _u32,
    _u64)

# ---- commands (enum bpf_cmd) the product does not issue ---------------------------------

BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14

_COMMAND_NAMES = {
    BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_PROG_TEST_RUN: "BPF_PROG_TEST_RUN",
    BPF_PROG_GET_NEXT_ID: "BPF_PROG_GET_NEXT_ID",
    BPF_MAP_GET_NEXT_ID: "BPF_MAP_GET_NEXT_ID",
    BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_MAP_GET_FD_BY_ID: "BPF_MAP_GET_FD_BY_ID",
}

# ---- program types (enum bpf_prog_type) ----------------------------------------------------

BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_SCHED_CLS = 3

# ---- flags -------------------------------------------------------------------------------

# BPF_MAP_UPDATE_ELEM / batch elem_flags (the base module has BPF_ANY)
BPF_NOEXIST = 1
BPF_EXIST = 2

# BPF_OBJ_GET file_flags / BPF_MAP_GET_FD_BY_ID open_flags
BPF_F_RDONLY = 1 << 3


def _bpf(cmd, attr):
    """The base module's bpf(2) call, its BpfError naming this module's commands too."""
    try:
        return bpf._bpf(cmd, attr)
    except BpfError as exc:
        if cmd not in _COMMAND_NAMES:
            raise
        raise BpfError(exc.errno, _COMMAND_NAMES[cmd], exc.filename, exc.log)


# ---- bpf_attr members ---------------------------------------------------------------------

class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
        ("prog_btf_fd", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("func_info_cnt", _u32),
        ("line_info_rec_size", _u32),
        ("line_info", _u64),
        ("line_info_cnt", _u32),
        ("attach_btf_id", _u32),
        ("attach_prog_fd", _u32),
        ("core_relo_cnt", _u32),
        ("fd_array", _u64),
        ("core_relos", _u64),
        ("core_relo_rec_size", _u32),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", _u32),
        ("retval", _u32),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("data_in", _u64),
        ("data_out", _u64),
        ("repeat", _u32),
        ("duration", _u32),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("ctx_in", _u64),
        ("ctx_out", _u64),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
    ]


class _GetIdAttr(ctypes.Structure):
    # start_id / prog_id / map_id share the first slot.
    _fields_ = [
        ("start_id", _u32),
        ("next_id", _u32),
        ("open_flags", _u32),
    ]


class _SkBuff(ctypes.Structure):
    """struct __sk_buff, the context of socket filter / tc programs (192 bytes)."""
    _fields_ = [
        ("len", _u32),
        ("pkt_type", _u32),
        ("mark", _u32),
        ("queue_mapping", _u32),
        ("protocol", _u32),
        ("vlan_present", _u32),
        ("vlan_tci", _u32),
        ("vlan_proto", _u32),
        ("priority", _u32),
        ("ingress_ifindex", _u32),
        ("ifindex", _u32),
        ("tc_index", _u32),
        ("cb", _u32 * 5),
        ("hash", _u32),
        ("tc_classid", _u32),
        ("data", _u32),
        ("data_end", _u32),
        ("napi_id", _u32),
        ("family", _u32),
        ("remote_ip4", _u32),
        ("local_ip4", _u32),
        ("remote_ip6", _u32 * 4),
        ("local_ip6", _u32 * 4),
        ("remote_port", _u32),
        ("local_port", _u32),
        ("data_meta", _u32),
        ("flow_keys", _u64),        # __bpf_md_ptr: a pointer padded to 8 bytes
        ("tstamp", _u64),
        ("wire_len", _u32),
        ("gso_segs", _u32),
        ("sk", _u64),               # __bpf_md_ptr
        ("gso_size", _u32),
        ("tstamp_type", _u8),
        ("_pad0", _u8 * 3),
        ("hwtstamp", _u64),
    ]


# ---- maps and ids --------------------------------------------------------------------------

def map_next_key(fd, key, key_size):
    """The key after key (the first key if key is None), or None at the end."""
    if key is not None and len(key) != key_size:
        raise ValueError("key is %d bytes, key_size is %d" % (len(key), key_size))
    bpf._check_shape(fd, key_size)
    return bpf._next_key(fd, key, key_size)


def _next_id(cmd, start):
    attr = _GetIdAttr(start_id=start)
    try:
        _bpf(cmd, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return attr.next_id


def prog_next_id(start=0):
    """The id of the first loaded program after start, or None."""
    return _next_id(BPF_PROG_GET_NEXT_ID, start)


def map_next_id(start=0):
    """The id of the first map after start, or None."""
    return _next_id(BPF_MAP_GET_NEXT_ID, start)


def prog_ids():
    """Iterate over the ids of all loaded programs."""
    current = prog_next_id(0)
    while current is not None:
        yield current
        current = prog_next_id(current)


def map_ids():
    """Iterate over the ids of all maps."""
    current = map_next_id(0)
    while current is not None:
        yield current
        current = map_next_id(current)


def prog_get_fd_by_id(prog_id):
    """A new fd for the program with this id (ENOENT if it is gone)."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(start_id=prog_id))


def map_get_fd_by_id(map_id, flags=0):
    """A new fd for the map with this id; flags may be BPF_F_RDONLY or BPF_F_WRONLY."""
    return _bpf(BPF_MAP_GET_FD_BY_ID, _GetIdAttr(start_id=map_id, open_flags=flags))


# ---- programs ----------------------------------------------------------------------------

def prog_load_raw(prog_type, insns, license="GPL", name="",  # pylint: disable=redefined-builtin
                  expected_attach_type=0, log_size=1 << 20):
    """Load raw eBPF bytecode (a multiple of 8-byte struct bpf_insn) and return its fd.

    The first attempt runs without a verifier log (fast path); if it fails, the load is
    repeated with a log so the BpfError carries the verifier's explanation.  The errno
    reported is the one from the first attempt: a log that overflows its buffer turns
    the second attempt's errno into ENOSPC, which would hide the real cause.
    """
    insns = bytes(insns)
    if not insns or len(insns) % 8:
        raise ValueError("instructions must be a non-empty multiple of 8 bytes")
    code = _in_buf(insns)
    lic = _in_buf(license.encode("ascii") + b"\0")

    def attempt(log_buf):
        attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                             insns=_addr(code), license=_addr(lic),
                             prog_name=_obj_name(name),
                             expected_attach_type=expected_attach_type)
        if log_buf is not None:
            attr.log_level = 1
            attr.log_size = len(log_buf)
            attr.log_buf = _addr(log_buf)
        # The verifier may ask to be retried (EAGAIN) when it is interrupted.
        for _retry in range(5):
            try:
                return _bpf(BPF_PROG_LOAD, attr)
            except BpfError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(None)
    except BpfError as first:
        if not log_size:
            raise
        log = _out_buf(log_size)
        try:
            fd = attempt(log)
        except BpfError:
            raise BpfError(first.errno, first.command, log=_decode_name(log.value))
        return fd


def prog_test_run(prog_fd, data_in, repeat=1, ctx_in=None, data_size_out=None, flags=0, cpu=0):
    """Run a program on data_in with BPF_PROG_TEST_RUN: (retval, data_out, duration_ns).

    retval is the program's return value as the kernel reports it, an unsigned 32-bit
    number (TC_ACT_UNSPEC, -1, comes back as 0xffffffff).  duration_ns is the mean over
    repeat runs.  ctx_in is an optional context blob such as skb_ctx().  data_size_out
    defaults to len(data_in) + 4096, room for programs that grow the packet; a too small
    buffer makes the kernel fail with ENOSPC after the program has run.
    """
    data_in = bytes(data_in)
    if data_size_out is None:
        data_size_out = len(data_in) + 4096
    din = _in_buf(data_in)
    dout = _out_buf(data_size_out)
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data_in), data_in=_addr(din),
                        data_size_out=data_size_out, data_out=_addr(dout),
                        repeat=repeat, flags=flags, cpu=cpu)
    if ctx_in is not None:
        ctx = _in_buf(ctx_in)
        attr.ctx_in = _addr(ctx)
        attr.ctx_size_in = len(ctx_in)
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, dout.raw[:min(attr.data_size_out, data_size_out)], attr.duration


def skb_ctx(ifindex=0, mark=0):
    """A struct __sk_buff context for prog_test_run with ifindex and mark set.

    The kernel only accepts a few writable fields in a test context (mark, priority,
    ifindex, cb, tstamp, ...) and insists that the rest be zero, hence a zeroed struct.
    """
    ctx = _SkBuff(ifindex=ifindex, mark=mark)
    return ctypes.string_at(ctypes.addressof(ctx), ctypes.sizeof(ctx))

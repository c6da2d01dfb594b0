# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small, dependency-free wrapper around the Linux bpf(2) system call.

Only the standard library and ctypes are used, so this runs on any managed host with a
Python 3.9+ interpreter and no libbpf/bcc bindings.  Every command gets its own
ctypes.Structure that mirrors the matching member of ``union bpf_attr`` in
include/uapi/linux/bpf.h; the kernel accepts any prefix of the union as long as the
size argument says how much was passed (the rest is treated as zero), and rejects a
larger attr only if the bytes it does not know are non-zero.  So passing
``sizeof(struct)`` works on both older and newer kernels than the header it was
written against (6.1).

Pointers inside bpf_attr are ``__aligned_u64``: ctypes.c_uint64 has 8-byte alignment on
the two supported architectures (x86_64 and aarch64), so natural ctypes layout matches
the C layout; tests/unit/plugins/module_utils/test_bpf_syscall.py checks this against
the C compiler when one is available.

Failures raise BpfError, an OSError that also names the bpf command.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import errno
import os
import platform

# ---- commands (enum bpf_cmd) ------------------------------------------------------------

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

_COMMAND_NAMES = {
    BPF_MAP_CREATE: "BPF_MAP_CREATE",
    BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
    BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM",
    BPF_MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
    BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY",
    BPF_OBJ_PIN: "BPF_OBJ_PIN",
    BPF_OBJ_GET: "BPF_OBJ_GET",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_MAP_LOOKUP_BATCH: "BPF_MAP_LOOKUP_BATCH",
    BPF_MAP_UPDATE_BATCH: "BPF_MAP_UPDATE_BATCH",
    BPF_MAP_DELETE_BATCH: "BPF_MAP_DELETE_BATCH",
}

# ---- map types (enum bpf_map_type) ----------------------------------------------------

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_RINGBUF = 27

# Map types whose syscall-side value is one round_up(value_size, 8) slot per possible CPU.
PERCPU_MAP_TYPES = frozenset((BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                              BPF_MAP_TYPE_LRU_PERCPU_HASH,
                              BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE))

# ---- flags ---------------------------------------------------------------------------------

# BPF_MAP_UPDATE_ELEM / batch elem_flags
BPF_ANY = 0

# BPF_MAP_CREATE map_flags
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_NO_COMMON_LRU = 1 << 1

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8
BPF_FS_MAGIC = 0xcafe4a11

# The kernel's internal "not supported" errno (include/linux/errno.h).  It is not in
# userspace errno.h but bpf(2) does leak it, e.g. for batch ops on maps without them.
ENOTSUPP = 524

# Errors meaning "this map type has no batch operation": fall back to one-by-one calls.
_BATCH_UNSUPPORTED = frozenset((errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP))

_SYSCALL_NR = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}

_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8


class BpfError(OSError):
    """A failed bpf(2) (or related) call.

    errno/strerror/filename behave as in OSError; ``command`` is the bpf command name
    (e.g. "BPF_MAP_UPDATE_ELEM") and ``log`` a verifier log, when the failed call had one.
    """

    def __init__(self, err, command, filename=None, log=None):
        if filename is None:
            super(BpfError, self).__init__(err, _strerror(err))
        else:
            super(BpfError, self).__init__(err, _strerror(err), filename)
        self.command = command
        self.log = log

    def __str__(self):
        text = "%s failed: %s" % (self.command, super(BpfError, self).__str__())
        if self.log:
            text += "\nverifier log:\n%s" % self.log.rstrip()
        return text


def _strerror(err):
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP)"
    return os.strerror(err)


# ---- bpf_attr members -------------------------------------------------------------------

_u8 = ctypes.c_uint8
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("inner_map_fd", _u32),
        ("numa_node", _u32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", _u32),
        ("btf_fd", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("map_extra", _u64),
    ]


class _MapElemAttr(ctypes.Structure):
    # value and next_key share the third slot of the kernel's anonymous union.
    _fields_ = [
        ("map_fd", _u32),
        ("key", _u64),
        ("value", _u64),
        ("flags", _u64),
    ]


class _MapBatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", _u64),
        ("out_batch", _u64),
        ("keys", _u64),
        ("values", _u64),
        ("count", _u32),
        ("map_fd", _u32),
        ("elem_flags", _u64),
        ("flags", _u64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", _u64),
        ("bpf_fd", _u32),
        ("file_flags", _u32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", _u32),
        ("info_len", _u32),
        ("info", _u64),
    ]


class _MapInfo(ctypes.Structure):
    """struct bpf_map_info."""
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("_pad0", _u32),
        ("map_extra", _u64),
    ]


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info."""
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", _u8 * BPF_TAG_SIZE),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("gpl_compatible", _u32, 1),
        ("_pad0", _u32, 31),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32),
        ("nr_jited_func_lens", _u32),
        ("jited_ksyms", _u64),
        ("jited_func_lens", _u64),
        ("btf_id", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("nr_func_info", _u32),
        ("nr_line_info", _u32),
        ("line_info", _u64),
        ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32),
        ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32),
        ("prog_tags", _u64),
        ("run_time_ns", _u64),
        ("run_cnt", _u64),
        ("recursion_misses", _u64),
        ("verified_insns", _u32),
        ("attach_btf_obj_id", _u32),
        ("attach_btf_id", _u32),
        ("_pad1", _u32),
    ]


# ---- the system call ------------------------------------------------------------------

_state = {}


def _libc():
    """This process's libc, loaded once.

    A private CDLL instance is used so that setting argtypes on its functions cannot
    clash with other code in the process that also uses ctypes.CDLL(None).
    """
    libc = _state.get("libc")
    if libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.syscall.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_ulong)
        libc.statfs.restype = ctypes.c_int
        libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
        libc.mount.restype = ctypes.c_int
        libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_char_p)
        _state["libc"] = libc
    return libc


def _syscall_nr():
    machine = platform.machine().lower()
    return _SYSCALL_NR.get(machine)


def _bpf(cmd, attr, filename=None, retry_eintr=True):
    """bpf(cmd, &attr, sizeof(attr)); the non-negative result or BpfError.

    EINTR is retried unless the caller handles it itself: batch commands report partial
    progress together with EINTR, and blindly reissuing them would lose that.
    """
    name = _COMMAND_NAMES.get(cmd, "BPF_CMD_%d" % cmd)
    nr = _syscall_nr()
    if nr is None:
        raise BpfError(errno.ENOSYS, name, filename)
    syscall = _libc().syscall
    while True:
        ret = syscall(nr, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err == errno.EINTR and retry_eintr:
            continue
        raise BpfError(err, name, filename)


def _in_buf(data):
    """A ctypes buffer holding exactly data (at least one byte, so it has an address)."""
    data = bytes(data)
    return ctypes.create_string_buffer(data, max(len(data), 1))


def _out_buf(size):
    return ctypes.create_string_buffer(max(int(size), 1))


def _addr(buf):
    return ctypes.addressof(buf)


# ---- objects and pins ---------------------------------------------------------------------

def close(fd):
    """Close a map or program file descriptor."""
    os.close(fd)


def obj_get(path, flags=0):
    """Open a pinned map or program; returns a new fd.

    flags (file_flags) may be the kernel's BPF_F_RDONLY or BPF_F_WRONLY to open a map with
    restricted access.
    """
    pathname = _in_buf(os.fsencode(path) + b"\0")
    attr = _ObjAttr(pathname=_addr(pathname), file_flags=flags)
    return _bpf(BPF_OBJ_GET, attr, filename=path)


def obj_pin(fd, path):
    """Pin a map or program fd at path, which must be on a bpf filesystem.

    Unpinning is a plain os.unlink(path).
    """
    pathname = _in_buf(os.fsencode(path) + b"\0")
    attr = _ObjAttr(pathname=_addr(pathname), bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr, filename=path)


def _obj_name(name):
    """Encode an object name for map_name/prog_name: at most 15 bytes plus the NUL."""
    raw = name.encode("ascii") if not isinstance(name, bytes) else name
    return raw[:BPF_OBJ_NAME_LEN - 1]


def _get_info(fd, info):
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return attr.info_len


def _decode_name(raw):
    return raw.decode("utf-8", "replace")


# ---- maps ---------------------------------------------------------------------------------

def map_create(map_type, key_size, value_size, max_entries, map_flags=0, name=""):
    """Create a map and return its fd.

    value_size is the per-element size even for per-CPU maps; name is truncated to the
    kernel's 15 characters (letters, digits, '_' and '.').
    """
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=map_flags,
                          map_name=_obj_name(name))
    return _bpf(BPF_MAP_CREATE, attr)


def _map_info_raw(fd):
    info = _MapInfo()
    _get_info(fd, info)
    return info


def map_info(fd):
    """Type, id, key/value sizes, max_entries, flags and name of the map behind fd."""
    info = _map_info_raw(fd)
    return {
        "type": info.type,
        "id": info.id,
        "key_size": info.key_size,
        "value_size": info.value_size,
        "max_entries": info.max_entries,
        "map_flags": info.map_flags,
        "name": _decode_name(info.name),
        "ifindex": info.ifindex,
        "btf_id": info.btf_id,
        "map_extra": info.map_extra,
    }


def _parse_cpu_list(text):
    """[0, 1, 2, 3, 8] from the kernel's cpu list format "0-3,8"."""
    cpus = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.extend(range(int(low), int(high) + 1))
        else:
            cpus.append(int(part))
    return cpus


def possible_cpus():
    """The possible CPU ids, from /sys/devices/system/cpu/possible.

    Per-CPU maps are sized by possible CPUs, not online ones, so nproc is not enough.
    The set is fixed at boot, so it is read once.
    """
    cpus = _state.get("possible_cpus")
    if cpus is None:
        with open("/sys/devices/system/cpu/possible") as handle:
            cpus = tuple(_parse_cpu_list(handle.read()))
        _state["possible_cpus"] = cpus
    return list(cpus)


def percpu_value_size(value_size):
    """Syscall-side value size of a per-CPU map: round_up(value_size, 8) per possible CPU."""
    return ((value_size + 7) // 8) * 8 * len(possible_cpus())


def _map_shape(fd):
    """(key_size, value buffer size) the kernel copies to and from userspace for fd."""
    info = _map_info_raw(fd)
    value_size = info.value_size
    if info.type in PERCPU_MAP_TYPES:
        value_size = percpu_value_size(value_size)
    return info.key_size, value_size


def _check_shape(fd, key_size, value_size=None):
    """Refuse sizes that disagree with the map.

    The kernel copies exactly the map's key_size/value_size bytes through the pointers
    we give it; a buffer sized from a wrong guess would let it write past the end of a
    Python-owned buffer (silent heap corruption) or read garbage into the map.  One
    extra BPF_OBJ_GET_INFO_BY_FD per call is cheap insurance against that.
    """
    want_key, want_value = _map_shape(fd)
    if key_size != want_key or (value_size is not None and value_size != want_value):
        raise ValueError(
            "map fd %d takes %d-byte keys and %d-byte values, not %s/%s"
            % (fd, want_key, want_value, key_size,
               "-" if value_size is None else value_size))


def _lookup(fd, key, value_size, flags=0):
    kbuf = _in_buf(key)
    vbuf = _out_buf(value_size)
    attr = _MapElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(vbuf), flags=flags)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw[:value_size]


def _update(fd, key, value, flags=0):
    kbuf = _in_buf(key)
    vbuf = _in_buf(value)
    attr = _MapElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(vbuf), flags=flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def _delete(fd, key):
    kbuf = _in_buf(key)
    attr = _MapElemAttr(map_fd=fd, key=_addr(kbuf))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _next_key(fd, key, key_size):
    kbuf = None if key is None else _in_buf(key)
    nbuf = _out_buf(key_size)
    attr = _MapElemAttr(map_fd=fd, key=0 if kbuf is None else _addr(kbuf), value=_addr(nbuf))
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return nbuf.raw[:key_size]


def map_lookup(fd, key, value_size, flags=0):
    """The value stored under key, or None if there is none.

    value_size is the whole syscall-side value: percpu_value_size() for per-CPU maps.
    """
    _check_shape(fd, len(key), value_size)
    return _lookup(fd, key, value_size, flags)


def map_update(fd, key, value, flags=BPF_ANY):
    """Store value under key; flags is BPF_ANY or another of the kernel's update flags."""
    _check_shape(fd, len(key), len(value))
    _update(fd, key, value, flags)


def map_delete(fd, key):
    """Delete key; False if it was not there."""
    _check_shape(fd, len(key))
    return _delete(fd, key)


def _iterate_one_by_one(fd, key_size, value_size):
    """Walk a map with GET_NEXT_KEY + LOOKUP_ELEM, for maps without batch support.

    Entries deleted concurrently are skipped; a hash map may restart from its first key
    if the current key vanishes, which is inherent to this interface.
    """
    key = None
    while True:
        key = _next_key(fd, key, key_size)
        if key is None:
            return
        value = _lookup(fd, key, value_size)
        if value is not None:
            yield key, value


def map_lookup_batch(fd, key_size, value_size, chunk=4096):
    """Iterate over (key, value) byte pairs of a whole map with BPF_MAP_LOOKUP_BATCH.

    value_size is the whole syscall-side value (percpu_value_size() for per-CPU maps).
    Sizes are checked against the map before any iteration starts.  Map types without
    batch lookup (e.g. LPM tries) are read with GET_NEXT_KEY + LOOKUP_ELEM instead.
    """
    _check_shape(fd, key_size, value_size)
    return _pairs_of_chunks(_lookup_batches(fd, key_size, value_size, max(1, int(chunk))),
                            key_size, value_size)


def map_lookup_batch_raw(fd, key_size, value_size, chunk=8192):
    """Like map_lookup_batch, but yield (keys, values, count) per batch: two contiguous
    byte strings of count records each.  Callers that scan millions of entries parse
    these with struct.iter_unpack instead of building a pair per entry."""
    _check_shape(fd, key_size, value_size)
    return _lookup_batches(fd, key_size, value_size, max(1, int(chunk)))


def _pairs_of_chunks(chunks, key_size, value_size):
    for key_raw, value_raw, got in chunks:
        for index in range(got):
            yield (key_raw[index * key_size:(index + 1) * key_size],
                   value_raw[index * value_size:(index + 1) * value_size])


def _one_by_one_chunks(fd, key_size, value_size):
    for key, value in _iterate_one_by_one(fd, key_size, value_size):
        yield key, value, 1


def _lookup_batches(fd, key_size, value_size, count):
    # The batch cursor is opaque: hash maps store a u32 bucket index, the generic
    # (array) implementation a whole key.  Make it big enough for either.
    token_size = max(key_size, 8)
    in_token = _out_buf(token_size)
    out_token = _out_buf(token_size)
    started = False
    while True:
        keys = _out_buf(count * key_size)
        values = _out_buf(count * value_size)
        attr = _MapBatchAttr(in_batch=_addr(in_token) if started else 0,
                             out_batch=_addr(out_token), keys=_addr(keys),
                             values=_addr(values), count=count, map_fd=fd)
        last = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr, retry_eintr=False)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                # End of map; the kernel still reports (and copied) the final partial batch.
                last = True
            elif exc.errno == errno.ENOSPC and attr.count == 0:
                # A hash bucket holds more entries than fit in count: retry bigger from
                # the same cursor.  A bucket never exceeds max_entries, so this ends.
                count *= 2
                continue
            elif exc.errno == errno.EINTR:
                # Partial batch with a valid cursor (if anything was returned).
                if attr.count == 0:
                    continue
            elif not started and exc.errno in _BATCH_UNSUPPORTED:
                yield from _one_by_one_chunks(fd, key_size, value_size)
                return
            else:
                raise
        got = attr.count
        if got:
            yield keys.raw[:got * key_size], values.raw[:got * value_size], got
        if last:
            return
        ctypes.memmove(in_token, out_token, token_size)
        started = True


def _check_items(items, key_size, value_size):
    for key, value in items:
        if len(key) != key_size or len(value) != value_size:
            raise ValueError("item sizes %d/%d differ from key_size %d / value_size %d"
                             % (len(key), len(value), key_size, value_size))


def map_update_batch(fd, items, key_size, value_size, flags=BPF_ANY, chunk=8192):
    """Store many (key, value) byte pairs with BPF_MAP_UPDATE_BATCH; returns how many.

    flags applies to every element.  On error the elements before the failing one have
    been stored.  Map types without batch update (LPM tries, for one) are updated one
    element at a time instead.
    """
    items = list(items)
    _check_items(items, key_size, value_size)
    _check_shape(fd, key_size, value_size)
    chunk = max(1, int(chunk))
    pos = 0
    batched = False
    while pos < len(items):
        part = items[pos:pos + chunk]
        keys = _in_buf(b"".join(key for key, _value in part))
        values = _in_buf(b"".join(value for _key, value in part))
        attr = _MapBatchAttr(keys=_addr(keys), values=_addr(values), count=len(part),
                             map_fd=fd, elem_flags=flags)
        try:
            _bpf(BPF_MAP_UPDATE_BATCH, attr, retry_eintr=False)
        except BpfError as exc:
            if exc.errno == errno.EINTR:
                pos += attr.count
                continue
            if not batched and exc.errno in _BATCH_UNSUPPORTED:
                for key, value in items[pos:]:
                    _update(fd, key, value, flags)
                return len(items)
            raise
        batched = True
        pos += len(part)
    return len(items)


def map_delete_batch(fd, keys, key_size, chunk=8192):
    """Delete many keys with BPF_MAP_DELETE_BATCH; returns how many were deleted.

    Keys that are not in the map are skipped.  Map types without batch delete are
    handled one key at a time instead.
    """
    keys = list(keys)
    for key in keys:
        if len(key) != key_size:
            raise ValueError("key is %d bytes, key_size is %d" % (len(key), key_size))
    _check_shape(fd, key_size)
    chunk = max(1, int(chunk))
    pos = 0
    deleted = 0
    batched = False
    while pos < len(keys):
        part = keys[pos:pos + chunk]
        buf = _in_buf(b"".join(part))
        attr = _MapBatchAttr(keys=_addr(buf), count=len(part), map_fd=fd)
        try:
            _bpf(BPF_MAP_DELETE_BATCH, attr, retry_eintr=False)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                # The kernel stops at the first missing key and reports how many it
                # deleted before it; step over the missing one and carry on.
                batched = True
                deleted += attr.count
                pos += attr.count + 1
                continue
            if exc.errno == errno.EINTR:
                deleted += attr.count
                pos += attr.count
                continue
            if not batched and exc.errno in _BATCH_UNSUPPORTED:
                for key in keys[pos:]:
                    if _delete(fd, key):
                        deleted += 1
                return deleted
            raise
        batched = True
        deleted += len(part)
        pos += len(part)
    return deleted


# ---- programs ----------------------------------------------------------------------------

def prog_info(fd):
    """Type, id, tag, name, load time, owner and map ids of the program behind fd.

    The map ids need a second call: the first one only reports how many there are.
    """
    info = _ProgInfo()
    _get_info(fd, info)
    map_ids_list = []
    if info.nr_map_ids:
        wanted = info.nr_map_ids
        ids = (_u32 * wanted)()
        # A fresh, zeroed struct: reusing the first answer would hand the kernel non-zero
        # lengths (jited_prog_len, ...) with NULL buffers, which it rejects with EFAULT.
        second = _ProgInfo(nr_map_ids=wanted, map_ids=_addr(ids))
        _get_info(fd, second)
        map_ids_list = list(ids[:min(wanted, second.nr_map_ids)])
    return {
        "type": info.type,
        "id": info.id,
        "tag": bytes(info.tag).hex(),
        "name": _decode_name(info.name),
        "load_time": info.load_time,
        "created_by_uid": info.created_by_uid,
        "nr_map_ids": len(map_ids_list),
        "map_ids": map_ids_list,
        "jited_prog_len": info.jited_prog_len,
        "xlated_prog_len": info.xlated_prog_len,
        "gpl_compatible": bool(info.gpl_compatible),
        "btf_id": info.btf_id,
        "run_time_ns": info.run_time_ns,
        "run_cnt": info.run_cnt,
        "verified_insns": info.verified_insns,
    }


# ---- bpf filesystem ----------------------------------------------------------------------

def is_bpffs(path):
    """True if path exists and lies on a bpf filesystem (statfs f_type BPF_FS_MAGIC)."""
    # struct statfs starts with f_type as a native long on x86_64 and aarch64; the
    # buffer is deliberately larger than the struct (120 bytes on both).
    buf = _out_buf(512)
    if _libc().statfs(os.fsencode(path), _addr(buf)) != 0:
        return False
    f_type = ctypes.c_ulong.from_buffer(buf).value
    return (f_type & 0xffffffff) == BPF_FS_MAGIC


def ensure_bpffs(path="/sys/fs/bpf"):
    """Make sure path is on a bpf filesystem, mounting one there if not.

    A missing directory below an existing bpffs (e.g. /sys/fs/bpf/foo) is simply created
    there rather than stacking a second bpffs on it.  Returns True if it mounted.
    """
    if is_bpffs(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.exists(path) and is_bpffs(parent):
        os.makedirs(path, 0o700)
        return False
    if not os.path.isdir(path):
        os.makedirs(path, 0o700)
    # nosuid/nodev/noexec as systemd mounts it: pins need none of the three.
    ret = _libc().mount(b"bpf", os.fsencode(path), b"bpf",
                        _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=0700")
    if ret != 0:
        raise BpfError(ctypes.get_errno(), "mount(bpf)", filename=path)
    return True

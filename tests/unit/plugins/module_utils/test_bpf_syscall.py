# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_bpf_syscall against the running kernel.  Needs root (CAP_BPF/CAP_SYS_ADMIN) and bpffs."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ctypes
import errno
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import uuid

import pytest

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.tests.harness import bpf_syscall_extra as bpfx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bpf(2) needs root")

BPFFS = "/sys/fs/bpf"


# ---- helpers ----------------------------------------------------------------------------

def insn(code, dst=0, src=0, off=0, imm=0):
    """One struct bpf_insn."""
    return struct.pack("=BBhi", code, (src << 4) | dst, off, imm)


MOV64_IMM = 0xb7     # BPF_ALU64 | BPF_MOV | BPF_K
EXIT = 0x95          # BPF_JMP | BPF_EXIT
LDX_W = 0x61         # BPF_LDX | BPF_MEM | BPF_W
LD_IMM64 = 0x18      # BPF_LD | BPF_IMM | BPF_DW (two slots)
PSEUDO_MAP_FD = 1

SKB_MARK_OFFSET = 8
SKB_IFINDEX_OFFSET = 40
SIZEOF_SKB = 192


def u32(value):
    return struct.pack("=I", value)


def u64(value):
    return struct.pack("=Q", value)


def lpm_key(prefixlen, address):
    """struct { __u32 prefixlen; __u8 addr[4]; } for an IPv4 LPM trie."""
    return struct.pack("=I", prefixlen) + socket.inet_aton(address)


def frame(size=64):
    """A minimal Ethernet + IPv4 frame, enough for skb test runs (>= ETH_HLEN)."""
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    return (eth + b"\x45" + b"\0" * (size - len(eth) - 1))[:size]


def bpf_fds():
    """Open file descriptors of this process that are bpf maps or programs."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue
        if target.startswith("anon_inode:bpf"):
            out.add(int(name))
    return out


class Fds:
    """Collects fds a test creates and closes whatever the test did not."""

    def __init__(self):
        self.open = []

    def add(self, fd):
        self.open.append(fd)
        return fd

    def close(self, fd):
        self.open.remove(fd)
        bpf.close(fd)

    def close_all(self):
        while self.open:
            bpf.close(self.open.pop())


@pytest.fixture(autouse=True)
def no_fd_leak():
    before = bpf_fds()
    yield
    leaked = bpf_fds() - before
    assert not leaked, "bpf fds left open: %s" % sorted(leaked)


@pytest.fixture
def fds():
    tracker = Fds()
    yield tracker
    tracker.close_all()


@pytest.fixture
def pin_dir():
    bpf.ensure_bpffs(BPFFS)
    path = os.path.join(BPFFS, "bpfsys_test_%s" % uuid.uuid4().hex[:12])
    os.mkdir(path)
    yield path
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))     # unpinning is unlink
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


# ---- layouts ----------------------------------------------------------------------------

# ctypes mirror -> C expression prefix for offsetof() (anonymous members of union bpf_attr
# are reached directly) and the C type for sizeof(), when it has one.
LAYOUTS = [
    (bpf._MapCreateAttr, "union bpf_attr", "", None),
    (bpf._MapElemAttr, "union bpf_attr", "", None),
    (bpf._MapBatchAttr, "union bpf_attr", "batch.", None),
    (bpfx._ProgLoadAttr, "union bpf_attr", "", None),
    (bpf._ObjAttr, "union bpf_attr", "", None),
    (bpfx._TestRunAttr, "union bpf_attr", "test.", None),
    (bpfx._GetIdAttr, "union bpf_attr", "", None),
    (bpf._InfoAttr, "union bpf_attr", "info.", None),
    (bpf._MapInfo, "struct bpf_map_info", "", "struct bpf_map_info"),
    (bpf._ProgInfo, "struct bpf_prog_info", "", "struct bpf_prog_info"),
    (bpfx._SkBuff, "struct __sk_buff", "", "struct __sk_buff"),
]


def test_layouts_match_the_c_compiler():
    """Every ctypes offset equals offsetof() in <linux/bpf.h> as the C compiler sees it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not os.path.exists("/usr/include/linux/bpf.h"):
        pytest.skip("no C compiler or no <linux/bpf.h>")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/bpf.h>",
             "int main(void) {"]
    expected = {}
    for mirror, ctype, prefix, sized in LAYOUTS:
        for field in mirror._fields_:
            name = field[0]
            if name.startswith("_") or len(field) == 3:     # padding and bit-fields
                continue
            label = "%s.%s" % (mirror.__name__, name)
            expected[label] = getattr(mirror, name).offset
            lines.append('printf("%s %%zu\\n", offsetof(%s, %s%s));' % (label, ctype, prefix, name))
        if sized:
            label = "%s.sizeof" % mirror.__name__
            expected[label] = ctypes.sizeof(mirror)
            lines.append('printf("%s %%zu\\n", sizeof(%s));' % (label, sized))
    lines.append("return 0; }")
    work = tempfile.mkdtemp(prefix="bpfsys-layout-")
    try:
        src = os.path.join(work, "layout.c")
        with open(src, "w") as handle:
            handle.write("\n".join(lines))
        binary = os.path.join(work, "layout")
        subprocess.check_call([compiler, "-o", binary, src])
        output = subprocess.check_output([binary]).decode()
    finally:
        shutil.rmtree(work)
    actual = dict((label, int(value)) for label, value in
                  (line.split() for line in output.splitlines()))
    for label, want in expected.items():
        if label.endswith(".sizeof"):
            # A newer header may have appended fields; the prefix we pass is still valid.
            assert actual[label] >= want, label
        else:
            assert actual[label] == want, label


def test_attr_sizes():
    assert ctypes.sizeof(bpf._MapElemAttr) == 32
    assert ctypes.sizeof(bpf._MapBatchAttr) == 56
    assert ctypes.sizeof(bpfx._TestRunAttr) == 80
    assert ctypes.sizeof(bpf._MapInfo) == 88
    assert ctypes.sizeof(bpf._ProgInfo) == 232


def test_skb_ctx():
    ctx = bpfx.skb_ctx(ifindex=7, mark=0xabcd)
    assert len(ctx) == SIZEOF_SKB
    assert struct.unpack_from("=I", ctx, SKB_IFINDEX_OFFSET)[0] == 7
    assert struct.unpack_from("=I", ctx, SKB_MARK_OFFSET)[0] == 0xabcd
    rest = bytearray(ctx)
    rest[SKB_IFINDEX_OFFSET:SKB_IFINDEX_OFFSET + 4] = b"\0" * 4
    rest[SKB_MARK_OFFSET:SKB_MARK_OFFSET + 4] = b"\0" * 4
    assert rest == bytearray(SIZEOF_SKB)


# ---- errors -----------------------------------------------------------------------------

def test_error_carries_errno_and_command(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 8, 2))
    bpf.map_update(fd, u32(1), u64(1))
    bpf.map_update(fd, u32(2), u64(2))
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_update(fd, u32(3), u64(3))
    exc = caught.value
    assert isinstance(exc, OSError)
    assert exc.errno == errno.E2BIG
    assert exc.command == "BPF_MAP_UPDATE_ELEM"
    assert str(exc) == "BPF_MAP_UPDATE_ELEM failed: [Errno 7] Argument list too long"


def test_obj_get_missing_names_the_path(pin_dir):
    missing = os.path.join(pin_dir, "nothing")
    with pytest.raises(bpf.BpfError) as caught:
        bpf.obj_get(missing)
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value).startswith("BPF_OBJ_GET failed: [Errno 2]")
    assert missing in str(caught.value)


def test_wrong_sizes_are_refused(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 8, 4))
    with pytest.raises(ValueError):
        bpf.map_lookup(fd, u32(1), 4)           # would let the kernel overrun the buffer
    with pytest.raises(ValueError):
        bpf.map_update(fd, u64(1), u64(1))
    with pytest.raises(ValueError):
        bpf.map_lookup_batch(fd, 4, 16)
    with pytest.raises(ValueError):
        bpf.map_update_batch(fd, [(u32(1), u32(1))], 4, 8)


# ---- single-element operations ----------------------------------------------------------

def test_hash_crud_and_info(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 8, 64, 0, "bpfsys_hash"))
    info = bpf.map_info(fd)
    assert info["type"] == bpf.BPF_MAP_TYPE_HASH
    assert (info["key_size"], info["value_size"], info["max_entries"]) == (4, 8, 64)
    assert info["map_flags"] == 0
    assert info["name"] == "bpfsys_hash"
    assert info["id"] > 0

    assert bpf.map_lookup(fd, u32(1), 8) is None
    assert bpfx.map_next_key(fd, None, 4) is None
    bpf.map_update(fd, u32(1), u64(100))
    bpf.map_update(fd, u32(2), u64(200), bpfx.BPF_NOEXIST)
    assert bpf.map_lookup(fd, u32(1), 8) == u64(100)

    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_update(fd, u32(1), u64(1), bpfx.BPF_NOEXIST)
    assert caught.value.errno == errno.EEXIST
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_update(fd, u32(9), u64(1), bpfx.BPF_EXIST)
    assert caught.value.errno == errno.ENOENT
    bpf.map_update(fd, u32(1), u64(101), bpfx.BPF_EXIST)
    assert bpf.map_lookup(fd, u32(1), 8) == u64(101)

    keys = []
    key = bpfx.map_next_key(fd, None, 4)
    while key is not None:
        keys.append(key)
        key = bpfx.map_next_key(fd, key, 4)
    assert sorted(keys) == [u32(1), u32(2)]

    assert bpf.map_delete(fd, u32(1)) is True
    assert bpf.map_delete(fd, u32(1)) is False
    assert bpf.map_lookup(fd, u32(1), 8) is None
    assert bpf.map_lookup(fd, u32(2), 8) == u64(200)


def test_lru_hash_per_cpu_lists(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_LRU_HASH, 8, 16, 256,
                                bpf.BPF_F_NO_COMMON_LRU, "bpfsys_lru"))
    info = bpf.map_info(fd)
    assert info["type"] == bpf.BPF_MAP_TYPE_LRU_HASH
    assert info["map_flags"] == bpf.BPF_F_NO_COMMON_LRU
    for index in range(32):
        bpf.map_update(fd, u64(index), u64(index) * 2)
    assert bpf.map_lookup(fd, u64(5), 16) == u64(5) * 2
    assert bpf.map_delete(fd, u64(5)) is True
    assert bpf.map_lookup(fd, u64(5), 16) is None
    assert len(list(bpf.map_lookup_batch(fd, 8, 16))) == 31


def test_lpm_trie_longest_prefix(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 16,
                                bpf.BPF_F_NO_PREALLOC, "bpfsys_lpm"))
    assert bpf.map_info(fd)["map_flags"] == bpf.BPF_F_NO_PREALLOC
    bpf.map_update(fd, lpm_key(8, "10.0.0.0"), u32(1))
    bpf.map_update(fd, lpm_key(16, "10.1.0.0"), u32(2))
    assert bpf.map_lookup(fd, lpm_key(32, "10.1.2.3"), 4) == u32(2)
    assert bpf.map_lookup(fd, lpm_key(32, "10.2.0.1"), 4) == u32(1)
    assert bpf.map_lookup(fd, lpm_key(32, "11.0.0.1"), 4) is None

    keys = []
    key = bpfx.map_next_key(fd, None, 8)
    while key is not None:
        keys.append(key)
        key = bpfx.map_next_key(fd, key, 8)
    assert sorted(keys) == sorted([lpm_key(8, "10.0.0.0"), lpm_key(16, "10.1.0.0")])

    assert bpf.map_delete(fd, lpm_key(16, "10.1.0.0")) is True
    assert bpf.map_lookup(fd, lpm_key(32, "10.1.2.3"), 4) == u32(1)


def test_percpu_array(fds):
    ncpu = len(bpf.possible_cpus())
    assert bpf.percpu_value_size(8) == 8 * ncpu
    assert bpf.percpu_value_size(12) == 16 * ncpu
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 4, 0, "bpfsys_pcpu"))
    info = bpf.map_info(fd)
    assert info["type"] == bpf.BPF_MAP_TYPE_PERCPU_ARRAY
    assert info["value_size"] == 8
    size = bpf.percpu_value_size(8)
    per_cpu = b"".join(u64(1000 + cpu) for cpu in range(ncpu))
    bpf.map_update(fd, u32(2), per_cpu)
    assert bpf.map_lookup(fd, u32(2), size) == per_cpu
    assert bpf.map_lookup(fd, u32(0), size) == bytes(size)
    with pytest.raises(ValueError):
        bpf.map_lookup(fd, u32(2), 8)           # the per-element size is not enough
    items = dict(bpf.map_lookup_batch(fd, 4, size))
    assert sorted(items) == [u32(i) for i in range(4)]
    assert items[u32(2)] == per_cpu


def test_possible_cpus_parser():
    assert bpf._parse_cpu_list("0-1\n") == [0, 1]
    assert bpf._parse_cpu_list("0") == [0]
    assert bpf._parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert 0 in bpf.possible_cpus()


# ---- batch operations -------------------------------------------------------------------

def test_hash_batch_10000(fds):
    count = 10000
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 8, count, 0, "bpfsys_big"))
    items = [(u32(i), u64(i * 3 + 1)) for i in range(count)]
    assert bpf.map_update_batch(fd, items, 4, 8) == count
    assert bpf.map_lookup(fd, u32(1234), 8) == u64(1234 * 3 + 1)

    read = list(bpf.map_lookup_batch(fd, 4, 8))
    assert len(read) == count
    assert dict(read) == dict(items)
    # Small chunks: many batches, each resuming from the previous cursor.
    assert dict(bpf.map_lookup_batch(fd, 4, 8, chunk=97)) == dict(items)

    # The map is full: the batch stops at the first element that does not fit.
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_update_batch(fd, [(u32(count + 1), u64(0))], 4, 8)
    assert caught.value.errno == errno.E2BIG
    assert caught.value.command == "BPF_MAP_UPDATE_BATCH"

    doomed = [u32(i) for i in range(0, count, 2)] + [u32(count + 5)]   # one is absent
    assert bpf.map_delete_batch(fd, doomed, 4) == count // 2
    left = dict(bpf.map_lookup_batch(fd, 4, 8))
    assert sorted(left) == sorted(u32(i) for i in range(1, count, 2))


def test_lookup_batch_grows_chunk_on_enospc(fds):
    """chunk=1 cannot hold a hash bucket with two entries: the kernel says ENOSPC."""
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 4, 512))
    items = [(u32(i), u32(~i & 0xffffffff)) for i in range(512)]
    bpf.map_update_batch(fd, items, 4, 4)
    assert dict(bpf.map_lookup_batch(fd, 4, 4, chunk=1)) == dict(items)


def test_lookup_batch_empty_and_array(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 4, 8))
    assert list(bpf.map_lookup_batch(fd, 4, 4)) == []
    arr = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 5))
    bpf.map_update_batch(arr, [(u32(3), u32(33))], 4, 4)
    got = list(bpf.map_lookup_batch(arr, 4, 4, chunk=2))
    assert got == [(u32(i), u32(33 if i == 3 else 0)) for i in range(5)]


def lpm_items(count):
    return [(lpm_key(24, "10.%d.%d.0" % (i // 256, i % 256)), u32(i)) for i in range(count)]


def test_lpm_batch_round_trip(fds):
    """Batch calls on an LPM trie work whether or not this kernel has LPM batch ops."""
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 1024, bpf.BPF_F_NO_PREALLOC))
    items = lpm_items(600)
    assert bpf.map_update_batch(fd, items, 8, 4, chunk=128) == 600
    assert dict(bpf.map_lookup_batch(fd, 8, 4, chunk=50)) == dict(items)
    assert bpf.map_lookup(fd, lpm_key(32, "10.1.7.9"), 4) == u32(256 + 7)
    assert bpf.map_delete_batch(fd, [key for key, _value in items[:100]], 8) == 100
    assert dict(bpf.map_lookup_batch(fd, 8, 4)) == dict(items[100:])


@pytest.fixture
def no_batch_ops(monkeypatch):
    """Make every batch command fail as on a kernel or map type without them."""
    real = bpf._bpf
    calls = []

    def fake(cmd, attr, *args, **kwargs):
        if cmd in (bpf.BPF_MAP_LOOKUP_BATCH, bpf.BPF_MAP_UPDATE_BATCH, bpf.BPF_MAP_DELETE_BATCH):
            calls.append(cmd)
            raise bpf.BpfError(bpf.ENOTSUPP, bpf._COMMAND_NAMES[cmd])
        return real(cmd, attr, *args, **kwargs)

    monkeypatch.setattr(bpf, "_bpf", fake)
    return calls


@pytest.mark.parametrize("map_type, flags", [
    (bpf.BPF_MAP_TYPE_LPM_TRIE, bpf.BPF_F_NO_PREALLOC),
    (bpf.BPF_MAP_TYPE_HASH, 0),
])
def test_batch_falls_back_when_unsupported(fds, no_batch_ops, map_type, flags):
    fd = fds.add(bpf.map_create(map_type, 8, 4, 512, flags))
    items = lpm_items(300)
    assert bpf.map_update_batch(fd, items, 8, 4) == 300
    assert dict(bpf.map_lookup_batch(fd, 8, 4)) == dict(items)
    missing = lpm_key(24, "192.168.0.0")
    assert bpf.map_delete_batch(fd, [k for k, _v in items[:50]] + [missing], 8) == 50
    assert dict(bpf.map_lookup_batch(fd, 8, 4)) == dict(items[50:])
    assert sorted(set(no_batch_ops)) == [bpf.BPF_MAP_LOOKUP_BATCH, bpf.BPF_MAP_UPDATE_BATCH,
                                         bpf.BPF_MAP_DELETE_BATCH]


def test_real_unsupported_batch_falls_back(fds):
    """Arrays have no batch delete (ENOTSUPP); the fallback's per-element error shows."""
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 4))
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_delete_batch(fd, [u32(0)], 4)
    assert caught.value.command == "BPF_MAP_DELETE_ELEM"
    assert caught.value.errno == errno.EINVAL


# ---- pins, ids and bpffs ----------------------------------------------------------------

def test_pin_and_obj_get(fds, pin_dir):
    assert bpf.is_bpffs(BPFFS)
    assert bpf.is_bpffs(pin_dir)
    assert not bpf.is_bpffs("/proc")
    assert not bpf.is_bpffs(os.path.join(pin_dir, "absent"))
    assert bpf.ensure_bpffs(BPFFS) is False

    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 8, 8, 0, "bpfsys_pin"))
    path = os.path.join(pin_dir, "pinned_map")
    bpf.obj_pin(fd, path)
    assert os.path.exists(path)
    with pytest.raises(bpf.BpfError) as caught:
        bpf.obj_pin(fd, path)
    assert caught.value.errno == errno.EEXIST

    again = fds.add(bpf.obj_get(path))
    assert again != fd
    assert bpf.map_info(again)["id"] == bpf.map_info(fd)["id"]
    bpf.map_update(fd, u32(7), u64(77))
    assert bpf.map_lookup(again, u32(7), 8) == u64(77)

    readonly = fds.add(bpf.obj_get(path, bpfx.BPF_F_RDONLY))
    assert bpf.map_lookup(readonly, u32(7), 8) == u64(77)
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_update(readonly, u32(8), u64(8))
    assert caught.value.errno == errno.EPERM


def test_ensure_bpffs_creates_directory_inside_bpffs(pin_dir):
    sub = os.path.join(pin_dir, "sub", "dir")
    assert bpf.ensure_bpffs(sub) is False       # created on the existing bpffs, not mounted
    assert os.path.isdir(sub)
    assert bpf.is_bpffs(sub)


def test_ensure_bpffs_mounts_where_there_is_none():
    """A fresh directory off bpffs gets its own bpffs instance (unmounted afterwards)."""
    path = tempfile.mkdtemp(prefix="bpfsys-mnt-")
    try:
        assert not bpf.is_bpffs(path)
        try:
            assert bpf.ensure_bpffs(path) is True
        except bpf.BpfError as exc:
            if exc.errno == errno.EPERM:
                pytest.skip("mount(2) not permitted here")
            raise
        try:
            assert bpf.is_bpffs(path)
            assert bpf.ensure_bpffs(path) is False
            assert os.stat(path).st_mode & 0o777 == 0o700
        finally:
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.umount2(path.encode(), 0) == 0, os.strerror(ctypes.get_errno())
        assert not bpf.is_bpffs(path)
    finally:
        os.rmdir(path)


def test_map_ids_and_fd_by_id(fds):
    fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, "bpfsys_id"))
    map_id = bpf.map_info(fd)["id"]
    assert map_id in list(bpfx.map_ids())
    assert bpfx.map_next_id(map_id - 1) is not None
    other = fds.add(bpfx.map_get_fd_by_id(map_id))
    assert bpf.map_info(other)["name"] == "bpfsys_id"
    with pytest.raises(bpf.BpfError) as caught:
        bpfx.map_get_fd_by_id(0xfffffff0)
    assert caught.value.errno == errno.ENOENT


# ---- programs ---------------------------------------------------------------------------

RETURN_2 = insn(MOV64_IMM, dst=0, imm=2) + insn(EXIT)


def test_prog_load_and_test_run(fds):
    fd = fds.add(bpfx.prog_load_raw(bpfx.BPF_PROG_TYPE_SCHED_CLS, RETURN_2, name="bpfsys_ret2"))
    retval, out, duration = bpfx.prog_test_run(fd, frame(), repeat=100)
    assert retval == 2
    assert duration > 0
    assert out == frame()       # tc programs see (and hand back) the whole L2 frame

    info = bpf.prog_info(fd)
    assert info["type"] == bpfx.BPF_PROG_TYPE_SCHED_CLS
    assert info["name"] == "bpfsys_ret2"
    assert len(info["tag"]) == 16
    int(info["tag"], 16)
    assert info["load_time"] > 0
    assert info["created_by_uid"] == 0
    assert info["nr_map_ids"] == 0 and info["map_ids"] == []
    assert info["id"] in list(bpfx.prog_ids())
    other = fds.add(bpfx.prog_get_fd_by_id(info["id"]))
    assert bpf.prog_info(other)["tag"] == info["tag"]


def test_socket_filter_test_run(fds):
    fd = fds.add(bpfx.prog_load_raw(bpfx.BPF_PROG_TYPE_SOCKET_FILTER, RETURN_2))
    retval, out, duration = bpfx.prog_test_run(fd, frame(), repeat=100)
    assert (retval, len(out)) == (2, len(frame()))
    assert duration > 0


def test_tc_program_sees_skb_ctx(fds):
    """A sched_cls program returning skb->mark: proves the context reaches the program."""
    code = insn(LDX_W, dst=0, src=1, off=SKB_MARK_OFFSET) + insn(EXIT)
    fd = fds.add(bpfx.prog_load_raw(bpfx.BPF_PROG_TYPE_SCHED_CLS, code, name="bpfsys_mark"))
    retval, _out, _duration = bpfx.prog_test_run(fd, frame(), ctx_in=bpfx.skb_ctx(ifindex=1, mark=0x5a5a))
    assert retval == 0x5a5a
    retval, _out, _duration = bpfx.prog_test_run(fd, frame())
    assert retval == 0


def test_prog_info_lists_maps(fds):
    map_fd = fds.add(bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1))
    map_id = bpf.map_info(map_fd)["id"]
    code = (insn(LD_IMM64, dst=1, src=PSEUDO_MAP_FD, imm=map_fd) + insn(0)
            + insn(MOV64_IMM, dst=0, imm=0) + insn(EXIT))
    fd = fds.add(bpfx.prog_load_raw(bpfx.BPF_PROG_TYPE_SOCKET_FILTER, code))
    info = bpf.prog_info(fd)
    assert info["nr_map_ids"] == 1
    assert info["map_ids"] == [map_id]


def test_verifier_rejection_carries_log():
    with pytest.raises(bpf.BpfError) as caught:
        bpfx.prog_load_raw(bpfx.BPF_PROG_TYPE_SOCKET_FILTER, insn(MOV64_IMM, dst=0, imm=0))
    exc = caught.value
    assert exc.command == "BPF_PROG_LOAD"
    assert exc.errno in (errno.EINVAL, errno.EACCES)
    assert exc.log
    assert str(exc).startswith("BPF_PROG_LOAD failed: [Errno")

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile files/bpf/microseg.bpf.c with BCC, pin its programs, remember what was built.

Kernel headers: BCC needs the running kernel's headers. When no package matches the
running kernel (a distribution kernel upgraded past its headers, a custom kernel, a VM
image), we fall back to the closest installed headers package: Debian splits one into an
arch tree and a -common tree, which BCC only finds as /lib/modules/<release>/{build,source};
we merge the two into one symlink tree in a cache directory and point BCC_KERNEL_SOURCE at
it, rather than writing into /lib/modules. TC programs do not depend on the exact kernel
version (no kprobes), so a nearby version compiles correct code; we report which was used.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import contextlib
import hashlib
import json
import os
import platform
import posixpath
import re
import shutil
import struct
import tempfile
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _program_options

HEADERS_CACHE = "/var/cache/microseg/kernel-headers"
# The program is every C file and header under files/bpf (the lib/ headers included);
# microseg.bpf.c is the one BCC compiles.
BPF_MAIN = "microseg.bpf.c"
SOURCE_SUFFIXES = (".c", ".h")
PROGRAMS = {
    # program function -> (pin name, hook it is attached to)
    "microseg_from_container": ("prog_from_container", "ingress"),
    "microseg_to_container": ("prog_to_container", "egress"),
}
HOOK_PROGRAM = dict((hook, fn) for fn, (_pin, hook) in PROGRAMS.items())
META_MAP = "microseg_meta"
# Pinned by other parts of the collection, removed with the rest on state=absent.
# bench_flow_map exists only in the MS_BENCH build (bench/run.py).
OTHER_PINS = ("policy_source", "bench_flow_map")
META_VALUE_SIZE = 65536
LOADER_VERSION = "1"


class LoaderError(Exception):
    pass


# ---- kernel headers ----------------------------------------------------------------

def _version_tuple(text):
    return tuple(int(n) for n in re.findall(r"\d+", text)[:4])


def _arch_flavours():
    machine = platform.machine()
    return {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}.get(
        machine, (machine,))


def _merge_tree(dst, layers):
    """Symlink-merge directory trees; the first layer wins on conflicts."""
    os.makedirs(dst)
    names = {}
    for layer in layers:
        for name in sorted(os.listdir(layer)):
            names.setdefault(name, []).append(os.path.join(layer, name))
    for name, paths in names.items():
        target = os.path.join(dst, name)
        dirs = [p for p in paths if os.path.isdir(p) and not os.path.islink(p)]
        if len(dirs) > 1:
            _merge_tree(target, dirs)
        else:
            os.symlink(os.path.realpath(paths[0]), target)


def _debian_common_dir(arch_dir):
    """Debian's arch headers Makefile includes the -common tree; follow it."""
    makefile = os.path.join(arch_dir, "Makefile")
    try:
        with open(makefile) as handle:
            for line in handle:
                match = re.match(r"\s*include\s+(\S+)/Makefile\s*$", line)
                if match and os.path.isdir(match.group(1)):
                    return match.group(1)
    except (IOError, OSError):
        pass
    return None


def find_kernel_headers(release=None, src_root="/usr/src", modules_root="/lib/modules",
                        cache_dir=HEADERS_CACHE):
    """Decide which kernel headers BCC compiles with.

    Returns a dict: kind (installed | kheaders | fallback), path, release, and env (the
    environment BCC needs). Raises LoaderError when nothing usable exists.
    """
    release = release or platform.release()
    build = os.path.join(modules_root, release, "build")
    if os.path.isdir(build):
        return {"kind": "installed", "path": build, "release": release, "env": {}}
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return {"kind": "kheaders", "path": "/sys/kernel/kheaders.tar.xz",
                "release": release, "env": {}}

    candidates = []
    flavours = _arch_flavours()
    for root, pattern in ((src_root, r"^linux-headers-(.+)$"), (os.path.join(src_root, "kernels"), r"^(.+)$")):
        if not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            match = re.match(pattern, name)
            path = os.path.join(root, name)
            if not match or not os.path.isdir(path):
                continue
            if not os.path.exists(os.path.join(path, "include", "generated", "autoconf.h")) and \
                    not os.path.exists(os.path.join(path, "include", "config", "auto.conf")):
                continue  # a -common tree, not buildable alone
            version = match.group(1)
            if root == src_root and not any(version.endswith(f) for f in flavours):
                continue
            candidates.append((_version_tuple(version), version, path))
    if not candidates:
        raise LoaderError(
            "no kernel headers for %s: /lib/modules/%s/build does not exist, the kernel has "
            "no /sys/kernel/kheaders.tar.xz, and no linux-headers-* tree for this architecture "
            "is installed under %s (install linux-headers-%s or kernel-devel)"
            % (release, release, src_root, _arch_flavours()[0]))
    running = _version_tuple(release)
    # Closest version: prefer the newest not newer than the running kernel, else the oldest.
    older = [c for c in candidates if c[0] <= running]
    chosen = max(older) if older else min(candidates)
    version, arch_dir = chosen[1], chosen[2]

    layers = [arch_dir]
    common = _debian_common_dir(arch_dir)
    if common:
        layers.append(common)
    merged = os.path.join(cache_dir, version)
    stamp = os.path.join(merged, ".microseg-layers")
    want = "\n".join(layers)
    current = None
    if os.path.exists(stamp):
        with open(stamp) as handle:
            current = handle.read()
    if current != want:
        if os.path.lexists(merged):
            shutil.rmtree(merged)
        parent = os.path.dirname(merged)
        if not os.path.isdir(parent):
            os.makedirs(parent)
        tmp = tempfile.mkdtemp(prefix=".merge-", dir=parent)
        os.rmdir(tmp)
        _merge_tree(tmp, layers)
        with open(os.path.join(tmp, ".microseg-layers"), "w") as handle:
            handle.write(want)
        os.rename(tmp, merged)
    return {"kind": "fallback", "path": merged, "release": release, "version": version,
            "layers": layers, "env": {"BCC_KERNEL_SOURCE": merged}}


# ---- compile parameters and cache key ----------------------------------------------

def cflags_for(pin_path, sizes, include_dir):
    flags = ["-I%s" % include_dir, '-DMS_PIN_DIR="%s"' % pin_path.rstrip("/")]
    flags.extend(_program_options.compile_flags(sizes))
    return flags


def bcc_version():
    try:
        import bcc  # pylint: disable=import-outside-toplevel
        return getattr(bcc, "__version__", "unknown")
    except ImportError:
        return None


def cache_key(sources, pin_path, sizes, release=None):
    """Everything that changes the compiled object. Equal key: no compile needed."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    digest.update(json.dumps({"pin_path": pin_path, "sizes": sizes, "loader": LOADER_VERSION,
                              "release": release or platform.release()},
                             sort_keys=True).encode())
    return digest.hexdigest()


def source_hash(sources):
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return digest.hexdigest()


def source_names(directory):
    """The C sources and headers under directory: sorted paths relative to it, with '/'."""
    names = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            if name.endswith(SOURCE_SUFFIXES):
                relative = os.path.relpath(os.path.join(root, name), directory)
                names.append(relative.replace(os.sep, "/"))
    return sorted(names)


def read_sources(directory):
    """{relative path: text} of the program's sources, as bpf_source carries them."""
    sources = {}
    for name in source_names(directory):
        with open(os.path.join(directory, *name.split("/"))) as handle:
            sources[name] = handle.read()
    if BPF_MAIN not in sources:
        raise LoaderError("no %s under %s" % (BPF_MAIN, directory))
    return sources


def _source_path(workdir, name):
    """Where source name goes under workdir; names come from bpf_source (or a saved record),
    so one that would land outside workdir is refused."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or \
            [part for part in parts if part in ("", ".", "..")]:
        raise LoaderError("bad BPF source name %r: a relative path below files/bpf" % name)
    return os.path.join(workdir, *parts)


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def flatten_sources(sources, main=BPF_MAIN):
    """main as one text, every #include "..." of another source spliced in once.

    BCC rewrites map calls (map.lookup(&key)) only in the file it is given, never in the
    headers that file includes; spliced in, the lib headers' map calls are rewritten too.
    #line markers keep compiler messages pointing at the original file and line. An
    include is resolved as the compiler would: next to the including file, then from the
    top of the sources. Anything else (<...> includes, unknown names) is left as written.
    """
    if main not in sources:
        raise LoaderError("the BPF sources have no %s" % main)
    done = set()
    out = []

    def resolve(includer, target):
        for candidate in (posixpath.join(posixpath.dirname(includer), target), target):
            candidate = posixpath.normpath(candidate)
            if candidate in sources:
                return candidate
        return None

    def splice(name):
        done.add(name)
        out.append('#line 1 "%s"' % name)
        for number, line in enumerate(sources[name].splitlines(), 1):
            match = _INCLUDE.match(line)
            target = resolve(name, match.group(1)) if match else None
            if target is None:
                out.append(line)
            elif target in done:
                out.append("")   # included already (or being included): keeps numbering
            else:
                splice(target)
                out.append('#line %d "%s"' % (number + 1, name))

    splice(main)
    return "\n".join(out) + "\n"


# ---- metadata stored with the pins ---------------------------------------------------

def read_meta(pin_path):
    """The loader's record kept in a pinned map beside the others, or None."""
    path = os.path.join(pin_path, META_MAP)
    if not os.path.exists(path):
        return None
    fd = bpf.obj_get(path)
    try:
        raw = bpf.map_lookup(fd, struct.pack("=I", 0), META_VALUE_SIZE)
    finally:
        bpf.close(fd)
    if not raw:
        return None
    length = struct.unpack("=I", raw[:4])[0]
    if not length:
        return None
    try:
        return json.loads(raw[4:4 + length].decode())
    except ValueError:
        return None


def write_meta(pin_path, meta):
    blob = json.dumps(meta, sort_keys=True).encode()
    if len(blob) + 4 > META_VALUE_SIZE:
        raise LoaderError("microseg metadata too large (%d bytes)" % len(blob))
    path = os.path.join(pin_path, META_MAP)
    if os.path.exists(path):
        fd = bpf.obj_get(path)
    else:
        fd = bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, META_VALUE_SIZE, 1, 0, "microseg_meta")
        bpf.obj_pin(fd, path)
    try:
        value = struct.pack("=I", len(blob)) + blob
        value += b"\0" * (META_VALUE_SIZE - len(value))
        bpf.map_update(fd, struct.pack("=I", 0), value, 0)
    finally:
        bpf.close(fd)


# ---- pinned map compatibility ---------------------------------------------------------

def map_mismatches(pin_path, sizes):
    """Pinned maps whose shape differs from what the new compile declares.

    BCC silently reuses an existing pin of the same name whatever its size, so a size
    change must move the old map aside first (see migrate_maps).
    """
    out = []
    for spec in _maps.MAP_SPECS:
        path = os.path.join(pin_path, spec.name)
        if not os.path.exists(path):
            continue
        fd = bpf.obj_get(path)
        try:
            info = bpf.map_info(fd)
        finally:
            bpf.close(fd)
        want = spec.expected_max_entries(sizes)
        if info["max_entries"] != want or info["type"] != spec.map_type or \
                info["key_size"] != spec.key_size or info["value_size"] != spec.value_size:
            out.append({"map": spec.name, "max_entries": info["max_entries"],
                        "want_max_entries": want})
    return out


def set_aside(pin_path, names):
    moved = []
    for name in names:
        src = os.path.join(pin_path, name)
        dst = os.path.join(pin_path, name + "_old")
        if os.path.lexists(dst):
            os.unlink(dst)
        os.rename(src, dst)
        moved.append(name)
    return moved


def migrate_maps(pin_path, names):
    """Copy entries from maps set aside into their resized replacements, then unpin the old.

    Returns {map: copied}. A smaller new map keeps as many entries as fit. A value that
    grew (a new release appends fields to a struct: microseg.h only ever appends) is copied
    with its new tail zeroed; any other change of layout starts the map empty.
    """
    copied = {}
    for name in names:
        spec = _maps.MAP_SPEC[name]
        old_path = os.path.join(pin_path, name + "_old")
        count = 0
        if spec.key is not None and spec.map_type not in (bpf.BPF_MAP_TYPE_PERCPU_ARRAY,):
            old_fd = bpf.obj_get(old_path)
            new_fd = bpf.obj_get(os.path.join(pin_path, name))
            try:
                new_max = bpf.map_info(new_fd)["max_entries"]
                old_info = bpf.map_info(old_fd)
                old_value_size = old_info["value_size"]
                items = []
                if old_info["key_size"] == spec.key_size and old_value_size <= spec.value_size:
                    tail = b"\0" * (spec.value_size - old_value_size)
                    for key, value in bpf.map_lookup_batch(old_fd, spec.key_size,
                                                           old_value_size):
                        items.append((bytes(key), bytes(value) + tail))
                        if len(items) >= new_max:
                            break
                if items:
                    count = bpf.map_update_batch(new_fd, items, spec.key_size, spec.value_size, 0)
            finally:
                bpf.close(old_fd)
                bpf.close(new_fd)
        os.unlink(old_path)
        copied[name] = count
    return copied


# ---- compile and load ------------------------------------------------------------------

@contextlib.contextmanager
def headers_environment(headers):
    """The environment BCC needs to find the headers find_kernel_headers() chose (a
    fallback tree is presented through variables), restored afterwards."""
    saved = {}
    try:
        for key, value in headers.get("env", {}).items():
            saved[key] = os.environ.get(key)
            os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def compile_and_load(sources, pin_path, sizes, headers, functions=None, defines=()):
    """Compile with BCC, creating or reusing the pinned maps; return program fds.

    functions defaults to the two attachable programs; benchmarks also load microseg_noop,
    and with defines=("MS_BENCH",) the bench-only entry points.
    Returns (fds by function name, seconds). The caller owns the fds.
    """
    try:
        from bcc import BPF  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise LoaderError("BCC python bindings are missing (python3-bpfcc / python3-bcc)")

    workdir = tempfile.mkdtemp(prefix="microseg-src-")
    started = time.time()
    try:
        for name, text in sources.items():
            path = _source_path(workdir, name)
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path))
            with open(path, "w") as handle:
                handle.write(text)
        flat = os.path.join(workdir, "microseg.flat.c")
        with open(flat, "w") as handle:
            handle.write(flatten_sources(sources))
        try:
            with headers_environment(headers):
                module = BPF(src_file=flat.encode(),
                             cflags=cflags_for(pin_path, sizes, workdir)
                             + ["-D%s" % name for name in defines])
        except Exception as exc:
            raise LoaderError("BCC failed to compile microseg.bpf.c with %s headers at %s: %s"
                              % (headers["kind"], headers["path"], exc))
        fds = {}
        try:
            for function in functions or PROGRAMS:
                fn = module.load_func(function.encode(), BPF.SCHED_CLS)
                # Keep our own fd: the BCC object closes its fds when it goes away.
                fds[function] = os.dup(fn.fd)
        except Exception as exc:
            for fd in fds.values():
                bpf.close(fd)
            raise LoaderError("the kernel refused the microseg program: %s" % exc)
        finally:
            module.cleanup()
        return fds, time.time() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def pin_programs(fds, pin_path, suffix=""):
    """Pin program fds under <pin>/prog_* (suffix for a staging name); returns paths."""
    paths = {}
    for function, fd in fds.items():
        path = os.path.join(pin_path, PROGRAMS[function][0] + suffix)
        if os.path.lexists(path):
            os.unlink(path)
        bpf.obj_pin(fd, path)
        paths[function] = path
    return paths


def promote_programs(pin_path, suffix):
    for _function, (pin, _hook) in PROGRAMS.items():
        staged = os.path.join(pin_path, pin + suffix)
        if os.path.lexists(staged):
            os.rename(staged, os.path.join(pin_path, pin))


def pinned_program_info(pin_path):
    """{function: prog_info} for the pinned programs that exist."""
    out = {}
    for function, (pin, _hook) in PROGRAMS.items():
        path = os.path.join(pin_path, pin)
        if not os.path.exists(path):
            continue
        fd = bpf.obj_get(path)
        try:
            out[function] = bpf.prog_info(fd)
        finally:
            bpf.close(fd)
    return out


def open_pinned_programs(pin_path):
    fds = {}
    for function, (pin, _hook) in PROGRAMS.items():
        fds[function] = bpf.obj_get(os.path.join(pin_path, pin))
    return fds


def remove_pins(pin_path):
    """Unpin everything this collection pinned under pin_path, then the directory."""
    removed = []
    if not os.path.isdir(pin_path):
        return removed
    ours = set(spec.name for spec in _maps.MAP_SPECS) | set([META_MAP]) | set(OTHER_PINS)
    ours |= set(pin for pin, _hook in PROGRAMS.values())
    for name in sorted(os.listdir(pin_path)):
        base = re.sub(r"_(old|new)$", "", name)
        if base in ours:
            os.unlink(os.path.join(pin_path, name))
            removed.append(name)
    if not os.listdir(pin_path):
        os.rmdir(pin_path)
    return removed


def ensure_pin_dir(pin_path):
    """Mount bpffs where the pin directory lives if needed; create the directory."""
    mounted = False
    parent = pin_path.rstrip("/")
    root = os.path.dirname(parent) or "/"
    if not bpf.is_bpffs(root) and not bpf.is_bpffs(parent):
        if not os.path.isdir(root):
            os.makedirs(root)
        mounted = bpf.ensure_bpffs(root)
    if not os.path.isdir(pin_path):
        os.makedirs(pin_path)
    return mounted

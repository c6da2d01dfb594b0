# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile files/bpf/microseg.bpf.c with BCC, pin its programs, remember what was built.

Which kernel headers the compile uses is _kernel_headers'; what happens to pinned maps whose
shape the compile changes is _map_migration's.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import hashlib
import json
import os
import platform
import posixpath
import re
import shutil
import tempfile
import time

from ansible_collections.ebpf.microseg.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.ebpf.microseg.plugins.module_utils import _kernel_headers
from ansible_collections.ebpf.microseg.plugins.module_utils import _maps
from ansible_collections.ebpf.microseg.plugins.module_utils import _pinned_blob
from ansible_collections.ebpf.microseg.plugins.module_utils import _program_options

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
# One u32-length-framed JSON value in a one-entry array (_pinned_blob's framing).
META = _pinned_blob.PinnedBlob(META_MAP, bpf.BPF_MAP_TYPE_ARRAY, META_VALUE_SIZE - 4,
                               json_options={"sort_keys": True})
LOADER_VERSION = "1"


LoaderError = _kernel_headers.LoaderError


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
    return META.read(pin_path)


def write_meta(pin_path, meta):
    try:
        chunks = META.encode(meta)
    except _pinned_blob.BlobTooLarge as exc:
        raise LoaderError("microseg metadata too large (%d bytes)" % exc.size)
    META.write(pin_path, chunks)


# ---- compile and load ------------------------------------------------------------------

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
            with _kernel_headers.headers_environment(headers):
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

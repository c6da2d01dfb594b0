# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which kernel headers BCC compiles files/bpf/microseg.bpf.c with.

BCC needs the running kernel's headers. When no package matches the running kernel (a
distribution kernel upgraded past its headers, a custom kernel, a VM image), we fall back
to the closest installed headers package: Debian splits one into an arch tree and a
-common tree, which BCC only finds as /lib/modules/<release>/{build,source}; we merge the
two into one symlink tree in a cache directory and point BCC_KERNEL_SOURCE at it, rather
than writing into /lib/modules. TC programs do not depend on the exact kernel version (no
kprobes), so a nearby version compiles correct code; we report which was used.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import contextlib
import os
import platform
import re
import shutil
import tempfile

HEADERS_CACHE = "/var/cache/microseg/kernel-headers"


class LoaderError(Exception):
    """What the loader raises: no usable headers here; sources, compile and load in
    _loader, which re-exports it (callers catch _loader.LoaderError). Defined here, the
    lower of the two modules, so that one exception type covers both."""


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

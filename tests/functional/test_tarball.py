# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection tarball carries no key material and no generated files.

`ansible-galaxy collection build` ignores .gitignore; galaxy.yml's build_ignore must list
every generated path. With what `make demo`, the tests and the tools leave behind present
(the lab's SSH private key and host key in lab/.state, .ansible, .hypothesis, ...; created
here only where they do not already exist, and removed again afterwards), the tarball must
hold no PEM/OpenSSH private key marker anywhere and no member under a generated path: the ones .gitignore
names and the ones listed below.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import fnmatch
import glob
import os
import shutil
import subprocess
import tarfile
import tempfile

from ansible_collections.ebpf.microseg.plugins.module_utils import _loader
from ansible_collections.ebpf.microseg.tests.harness import ansible_runner

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.realpath(os.path.dirname(os.path.dirname(HERE)))
# Built at run time so that this file itself does not carry the marker it looks for.
MARKER = ("PRIVATE" + " " + "KEY").encode()
FAKE_KEY = ("-----BEGIN OPENSSH %s-----\nbWljcm9zZWctdGVzdC1mYWtl\n-----END OPENSSH %s-----\n"
            % (MARKER.decode(), MARKER.decode()))

# Generated paths beyond .gitignore's (tool state, caches, molecule's ephemeral directory).
GENERATED = [
    ".venv", "build", ".git", ".ansible", ".cache", ".hypothesis", ".pytest_cache", ".tox",
    ".mypy_cache", "tests/output", "bench/results.md", "bench/*.png", "lab/.state",
    "lab/inventory/hosts.yml", "lab/inventory/hosts.yml.tmp", "molecule/*/.molecule",
    "changelogs/.plugin-cache.yaml", "__pycache__", "*.pyc", "*.tar.gz",
]

# What a demo, a test run and the tools leave in the tree (content marks them as ours).
FAKES = {
    "lab/.state/id_ed25519": FAKE_KEY,
    "lab/.state/id_ed25519.pub": "ssh-ed25519 AAAAmicroseg-test-fake microseg-lab\n",
    # Not named h<digits>: lab/fleet.py would take an h1/ directory for a host.
    "lab/.state/fake-hostkeys/ssh_host_ed25519_key": FAKE_KEY,
    "lab/inventory/hosts.yml": "# microseg-test-fake\n{}\n",
    ".ansible/microseg-test-fake": "microseg-test-fake\n",
    ".hypothesis/microseg-test-fake": "microseg-test-fake\n",
    ".pytest_cache/microseg-test-fake": "microseg-test-fake\n",
    "tests/output/microseg-test-fake": "microseg-test-fake\n",
    "bench/results.md": "microseg-test-fake\n",
    "bench/microseg-test-fake.png": "microseg-test-fake\n",
    "molecule/default/.molecule/microseg-test-fake": "microseg-test-fake\n",
    "microseg-test-fake.pem": FAKE_KEY,
}


def gitignore_patterns():
    patterns = []
    with open(os.path.join(ROOT, ".gitignore")) as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith(("#", "!")):
                patterns.append(line.rstrip("/").lstrip("/"))
    return patterns


def is_generated(member, patterns):
    """gitignore-style: a pattern without '/' matches any path component, one with '/' a
    leading part of the path."""
    parts = member.strip("/").split("/")
    for pattern in patterns:
        if "/" in pattern:
            if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
                return pattern
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return pattern
    return None


def create_fakes():
    """Create each fake that does not exist; returns (files, dirs) created, for removal."""
    files, dirs = [], []
    for rel, content in sorted(FAKES.items()):
        path = os.path.join(ROOT, rel)
        if os.path.lexists(path):
            continue
        missing = []
        parent = os.path.dirname(path)
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            os.mkdir(directory)
            dirs.append(directory)
        with open(path, "x") as handle:
            handle.write(content)
        files.append((path, content))
    return files, dirs


def remove_fakes(files, dirs):
    for path, content in files:
        try:
            with open(path) as handle:
                ours = handle.read() == content
        except (IOError, OSError):
            continue
        if ours:   # rewritten meanwhile (a lab came up): not ours any more
            os.unlink(path)
    for directory in sorted(dirs, key=len, reverse=True):
        try:
            os.rmdir(directory)   # only if empty: never what someone else put there
        except OSError:
            pass


def galaxy_bin():
    candidate = os.path.join(ROOT, ".venv", "bin", "ansible-galaxy")
    return candidate if os.path.exists(candidate) else ansible_runner.ansible_bin("ansible-galaxy")


def test_tarball_has_no_keys_and_no_generated_paths():
    out = tempfile.mkdtemp(prefix="microseg-tarball-")
    files, dirs = [], []
    try:
        files, dirs = create_fakes()
        proc = subprocess.run([galaxy_bin(), "collection", "build", "--output-path", out],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, check=False, timeout=300)
        assert proc.returncode == 0, proc.stdout
        tarballs = glob.glob(os.path.join(out, "ebpf-microseg-*.tar.gz"))
        assert len(tarballs) == 1, os.listdir(out)

        patterns = GENERATED + gitignore_patterns()
        with tarfile.open(tarballs[0]) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            # Not vacuous: the collection is in it.
            for expected in ("MANIFEST.json", "FILES.json", "plugins/modules/microseg_program.py",
                             "roles/microseg/tasks/main.yml", "files/bpf/microseg.bpf.c",
                             "files/bpf/microseg.h", "files/bpf/lib/session.h"):
                assert expected in names
            # The action plugin ships every source it finds: all of them are in the tarball.
            for source in _loader.source_names(os.path.join(ROOT, "files", "bpf")):
                assert "files/bpf/" + source in names
            generated = sorted("%s (%s)" % (n, is_generated(n, patterns))
                               for n in names if is_generated(n, patterns))
            assert generated == [], "generated paths in the tarball: %s" % generated
            keys = []
            for member in members:
                if member.isfile():
                    handle = tar.extractfile(member)
                    if MARKER in handle.read():
                        keys.append(member.name)
                    handle.close()
            assert keys == [], "key material in the tarball: %s" % keys
        # The fakes are the files looked for: none of them made it in.
        assert not set(FAKES) & set(names)
    finally:
        remove_fakes(files, dirs)
        shutil.rmtree(out, ignore_errors=True)


def test_is_generated_matches_like_gitignore():
    assert is_generated("lab/.state/id_ed25519", ["lab/.state"]) == "lab/.state"
    assert is_generated("plugins/x/__pycache__/a.pyc", ["__pycache__"]) == "__pycache__"
    assert is_generated("bench/traffic.png", ["bench/*.png"]) == "bench/*.png"
    assert is_generated("bench/traffic.json", ["bench/*.png", "lab/.state"]) is None
    assert is_generated("lab/inventory/hosts.yml", ["lab/inventory/hosts.yml"])
    assert is_generated("lab/inventory/group_vars/all.yml", ["lab/inventory/hosts.yml"]) is None

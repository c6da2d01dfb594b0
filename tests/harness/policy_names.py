# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rule names for the policy id tests and benches: random ones, and adversarial ones whose
31-bit crc32 (the id a name asks for, _policy_model.policy_id_for) is chosen.

name_with_id(target) builds a name whose crc32 is target, by meet in the middle: the names
are "<prefix>-XXXXXXXX-YYYYYYYY" (hex), and for messages of one length crc32 is affine, so
crc32(X, Y) = crc32(X, 0) ^ crc32(0, Y) ^ crc32(0, 0). A table of 2**17 X halves and at most
as many Y halves find one (about 8 expected), in a few tenths of a second.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import random
import zlib

MASK = 0x7fffffff
_HALF = 1 << 17
_ZERO = "00000000"


def crc31(name):
    return zlib.crc32(name.encode("utf-8")) & MASK


def _name(prefix, x, y):
    return "%s-%s-%s" % (prefix, x, y)


def name_with_id(target, prefix="svc"):
    """A name whose crc32 & 0x7fffffff is target (1 to 2**31-1); None if none was found
    (the prefix then is unlucky: try another)."""
    if not 0 < target <= MASK:
        raise ValueError("target must be 1 to 2**31-1, not %r" % (target,))
    base = zlib.crc32(_name(prefix, _ZERO, _ZERO).encode())
    halves = {}
    for index in range(_HALF):
        x = "%08x" % index
        halves.setdefault(zlib.crc32(_name(prefix, x, _ZERO).encode()) & MASK, x)
    for index in range(_HALF):
        y = "%08x" % (index * 2654435761 & 0xffffffff)
        need = (target ^ zlib.crc32(_name(prefix, _ZERO, y).encode()) ^ base) & MASK
        x = halves.get(need)
        if x is not None:
            name = _name(prefix, x, y)
            if crc31(name) == target:
                return name
    return None


def names_with_id(target, count, prefixes=("svc", "app", "db", "web", "job", "api")):
    """count different names whose crc32 is target."""
    out = []
    for prefix in prefixes:
        name = name_with_id(target, prefix)
        if name is not None:
            out.append(name)
        if len(out) == count:
            return out
    raise ValueError("only %d names found for %d" % (len(out), target))


def random_names(count, seed=0, prefix="svc"):
    """count different names like svc-76eb0366a45b (the names of issue 17)."""
    rng = random.Random(seed)
    out = set()
    while len(out) < count:
        out.add("%s-%012x" % (prefix, rng.getrandbits(48)))
    names = sorted(out)       # a set's order changes with the hash seed: sort, then shuffle
    rng.shuffle(names)
    return names


def birthday_pairs(count=1 << 17, seed=17):
    """Pairs of different random names with the same 31-bit crc32 (about count**2 / 2**32
    of them: 4 for 2**17 names, in a tenth of a second)."""
    rng = random.Random(seed)
    seen = {}
    pairs = []
    while not pairs:
        for _index in range(count):
            name = "svc-%012x" % rng.getrandbits(48)
            other = seen.setdefault(crc31(name), name)
            if other != name:
                pairs.append((other, name))
    return pairs

# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consumer side of a BPF ring buffer, over mmap, without BCC or libbpf.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it), page 1 the
producer position, then the data area mapped twice in a row so that a record crossing the
end can be read contiguously. Each record starts with an 8-byte header whose length word
carries a BUSY bit (still being written) and a DISCARD bit.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import mmap
import struct

RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SZ = 8


class RingBuffer:
    """fd: a BPF_MAP_TYPE_RINGBUF map; size: its data area in bytes (its max_entries)."""

    def __init__(self, fd, size):
        self.page = mmap.PAGESIZE
        self.size = size
        self._consumer = mmap.mmap(fd, self.page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(fd, self.page + 2 * self.size, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=self.page)

    def close(self):
        self._consumer.close()
        self._producer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _consumer_pos(self):
        return struct.unpack_from("=Q", self._consumer, 0)[0]

    def _producer_pos(self):
        return struct.unpack_from("=Q", self._producer, 0)[0]

    def drain(self, limit=None):
        """Return the committed records (bytes) not yet consumed, and consume them."""
        records = []
        cons = self._consumer_pos()
        prod = self._producer_pos()
        mask = self.size - 1
        while cons < prod:
            offset = self.page + (cons & mask)
            length = struct.unpack_from("=I", self._producer, offset)[0]
            if length & RINGBUF_BUSY_BIT:
                break
            data_len = length & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)
            if not length & RINGBUF_DISCARD_BIT:
                start = offset + RINGBUF_HDR_SZ
                records.append(self._producer[start:start + data_len])
            cons += (data_len + RINGBUF_HDR_SZ + 7) & ~7
            struct.pack_into("=Q", self._consumer, 0, cons)
            if limit is not None and len(records) >= limit:
                break
        return records

"""Drain a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) by reading its shared memory, in batches.

Layer rule: this is the live layer, the only code that uses ctypes or needs root. ctypes is
used here for bpf(2) only, once, when a reader opens; reading events is pure Python over
``mmap`` (no ctypes call, no callback, no GIL hand-off per event), so a drain thread copies
a whole batch of records while holding the GIL once, and releases it only in epoll/poll.

The ABI (include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c; stable since Linux 5.8):

- page 0 of the map fd is the *consumer page*: ``consumer_pos`` (u64) at offset 0. User
  space maps it read-write: it is the only thing user space writes.
- page 1 is the *producer page*: ``producer_pos`` (u64) at offset 0 (newer kernels keep
  ``pending_pos`` after it, which readers need not look at). Read-only.
- from page 2 on, the data area (``max_entries`` bytes, a power of two and a multiple of
  the page size) is mapped *twice in a row*, so a record that starts near the end of the
  area continues in the second copy and can be read as one contiguous slice.
- each record starts with an 8-byte header (BPF_RINGBUF_HDR_SZ): u32 ``len`` whose bit 31
  is BPF_RINGBUF_BUSY_BIT (reserved, not committed yet) and bit 30 BPF_RINGBUF_DISCARD_BIT
  (committed but discarded: skip it), then u32 ``pg_off`` (the kernel's own bookkeeping).
  The sample follows; the record occupies ``round_up(len + 8, 8)`` bytes. Positions are
  free-running u64 byte counters; ``pos & (size - 1)`` is the offset in the data area.
- ``len`` is the exact size the BPF program passed to bpf_ringbuf_output() or reserved:
  unlike perf buffers (see perfbuf.py) a ring buffer sample carries no padding.

Wake-ups: bpf_ringbuf_commit() wakes the map fd's waiters only when the record it commits
is the one the consumer position points at (the consumer had caught up), or when the BPF
program passes BPF_RB_FORCE_WAKEUP. So a reader must keep reading until the ring looks
empty (or rely on level-triggered epoll/poll, which reports the fd readable as long as
``producer_pos != consumer_pos``); advancing the consumer position once per batch is what
the protocol expects.
"""

from __future__ import annotations

import mmap

from ecapture.live.bpfsys import BPF_MAP_TYPE_RINGBUF, map_info

# Record header bits and size (include/uapi/linux/bpf.h).
_BUSY_BIT = 1 << 31
_DISCARD_BIT = 1 << 30
_HDR_SZ = 8


# Memory ordering. The kernel publishes a record with release semantics: it writes the
# sample, then clears BUSY in the header (xchg / smp_store_release in bpf_ringbuf_commit),
# and advances producer_pos with smp_store_release at reservation time; it reads our
# consumer_pos with smp_load_acquire before reusing space. A reader therefore needs
# (a) acquire loads of producer_pos and of each header's len, so that no later load of
#     the sample can be satisfied before the load that said the sample is ready, and
# (b) a release store of consumer_pos, so our copies of the samples complete before the
#     kernel can see the space as free and overwrite it,
# and all three must be single, untorn 4/8-byte accesses.
#
# On x86-64 all of this comes for free: aligned 4- and 8-byte loads and stores are
# single-copy atomic, and under x86-TSO loads are not reordered with other loads nor
# stores with earlier loads, so plain MOVs are acquire loads and release stores. Indexing a
# memoryview cast to "I"/"Q" compiles to one memcpy of that fixed size, i.e. one aligned
# MOV (struct.unpack_from with "<Q" would assemble bytes one at a time, which could tear);
# all our offsets are 8-aligned. Weakly ordered machines (arm64, ppc64le, riscv64) would
# need a real load-acquire for producer_pos and for every header (LDAR on arm64, or a
# "dmb ishld" after the load) and a store-release for consumer_pos (STLR, or "dmb ish"
# before the store). Pure Python cannot emit those; there this reader would need a tiny
# native helper, e.g. C11 atomic_load_explicit(..., memory_order_acquire).


class RingBufferReader:
    """Consume one BPF ring buffer map from user space, without libbpf or bcc callbacks.

    ``map_fd`` is the map's fd (bcc: ``bpf[b"events"].map_fd``; the reader does not own
    it and never closes it). ``data_size`` is the size of the data area in bytes (bcc's
    ``BPF_RINGBUF_OUTPUT(name, PAGES)``: PAGES * page size); None asks the kernel (the
    map's max_entries), and a value that disagrees with the kernel raises ValueError.

    One consumer only: a ring buffer has a single consumer position, so two readers (or
    this reader and bcc's ``open_ring_buffer``) on one map would steal each other's records
    and race on the position. Not thread-safe: use it from one thread (the drain thread).
    """

    def __init__(self, map_fd: int, data_size: int | None = None):
        info = map_info(map_fd)
        if info.type != BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"map fd {map_fd} ({info.name!r}) is of type {info.type}, "
                             f"not a ring buffer ({BPF_MAP_TYPE_RINGBUF})")
        if data_size is None:
            data_size = info.max_entries
        elif data_size != info.max_entries:
            raise ValueError(f"ring buffer {info.name!r} has {info.max_entries} data bytes, "
                             f"not {data_size}")
        page = mmap.PAGESIZE
        consumer = mmap.mmap(map_fd, page, access=mmap.ACCESS_WRITE, offset=0)
        try:
            # Producer page + data area + its second mapping, one read-only mapping.
            ro = mmap.mmap(map_fd, page + 2 * data_size, access=mmap.ACCESS_READ,
                           offset=page)
        except BaseException:
            consumer.close()
            raise
        self._map_fd = map_fd
        self._setup(consumer, ro, data_size, page)

    @classmethod
    def _over(cls, consumer: mmap.mmap, ro: mmap.mmap,
              data_size: int, page: int = mmap.PAGESIZE) -> RingBufferReader:
        """A reader over mappings laid out as the kernel's (consumer page; producer page
        followed by the data area twice), e.g. anonymous ones: for tests that build records
        by hand. close() unmaps them."""
        self = cls.__new__(cls)
        self._map_fd = -1
        self._setup(consumer, ro, data_size, page)
        return self

    def _setup(self, consumer: mmap.mmap, ro: mmap.mmap,
               data_size: int, page: int) -> None:
        if data_size <= 0 or data_size & (data_size - 1) or data_size % page:
            raise ValueError(f"ring buffer data size {data_size} is not a power of two "
                             f"multiple of the page size {page}")
        self.data_size = data_size
        self._mask = data_size - 1
        self._page = page
        self._consumer_mm = consumer
        self._ro_mm = ro
        self._cons_q = memoryview(consumer).cast("Q")  # [0]: consumer_pos
        ro_view = memoryview(ro)
        self._prod_view = ro_view[:8]
        self._prod_q = self._prod_view.cast("Q")  # [0]: producer_pos
        self._data_view = ro_view[page:page + 2 * data_size]
        self._hdr_i = self._data_view.cast("I")  # headers, indexed by offset // 4
        self._views = [self._hdr_i, self._data_view, self._prod_q, self._prod_view, ro_view,
                       self._cons_q]
        self.closed = False
        #: Statistics: how many reads stopped at a record still being written (BUSY), and
        #: how many discarded records were skipped.
        self.busy_stops = 0
        self.discarded = 0

    def fileno(self) -> int:
        """The map fd: epoll/poll report it readable while unconsumed data is in the ring.
        Use level-triggered epoll (the default): the kernel only signals a commit when the
        consumer had caught up, so an edge-triggered waiter that leaves data behind (e.g.
        read(max_bytes)) would not be woken again."""
        return self._map_fd

    def pending_bytes(self) -> int:
        """Bytes between the consumer and producer positions: record headers, padding,
        discarded and not yet committed records included. 0 means the ring is empty."""
        return int(self._prod_q[0] - self._cons_q[0])

    def read(self, max_bytes: int | None = None) -> list[bytes]:
        """Copy out the committed records, oldest first, and free their space.

        Discarded records are skipped; reading stops at the first record that is still
        reserved (BUSY: a producer on another CPU is writing it) since everything after it
        must wait for it. ``max_bytes`` caps the payload bytes returned (the first record is
        always returned, however large, so a reader always makes progress); the rest stays
        in the ring for the next call. The consumer position is written once, after the
        batch is copied, and only moves over whole records."""
        if self.closed:
            raise ValueError("read from a closed RingBufferReader")
        cons = start = self._cons_q[0]
        prod = self._prod_q[0]  # acquire (free on x86, see above)
        if cons == prod:
            return []
        out: list[bytes] = []
        append = out.append
        got = 0
        mask = self._mask
        hdr = self._hdr_i
        mm = self._ro_mm
        base = self._page + _HDR_SZ  # data area offset in the read-only mapping + header
        limit = self.data_size - _HDR_SZ
        busy, discard, flags = _BUSY_BIT, _DISCARD_BIT, _BUSY_BIT | _DISCARD_BIT  # locals
        while cons < prod:
            off = cons & mask
            word = hdr[off >> 2]  # acquire: BUSY cleared means the sample is written
            if word & busy:
                self.busy_stops += 1
                break
            length = word & ~flags
            if length > limit:  # cannot happen with a sane kernel; never return garbage
                raise RuntimeError(f"corrupt ring buffer record at {cons}: length {length}")
            if word & discard:
                self.discarded += 1
            else:
                if max_bytes is not None and out and got + length > max_bytes:
                    break
                s = base + off
                append(mm[s:s + length])  # contiguous thanks to the double mapping
                got += length
            cons += (length + 15) & ~7  # round_up(8-byte header + length, 8)
        if cons != start:
            self._cons_q[0] = cons  # release (free on x86, see above)
        return out

    def close(self) -> None:
        """Unmap the ring (the map fd stays open: it belongs to whoever created the map)."""
        if self.closed:
            return
        self.closed = True
        for view in self._views:
            view.release()
        self._views = []
        self._ro_mm.close()
        self._consumer_mm.close()

    def __enter__(self) -> RingBufferReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

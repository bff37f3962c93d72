"""Drain a BPF perf event array (BPF_MAP_TYPE_PERF_EVENT_ARRAY) by reading the per-CPU perf
ring buffers' shared memory, in batches.

Layer rule: this is the live layer, the only code that uses ctypes or needs root. ctypes is
used for perf_event_open(2) and bpf(2) only, when a reader opens and closes; reading events
is pure Python over ``mmap`` (no ctypes call, no callback, no GIL hand-off per event).

What bcc's ``open_perf_buffer`` does in C, done here from Python (include/uapi/linux/
perf_event.h, kernel/events/core.c, kernel/events/ring_buffer.c):

- for each CPU, perf_event_open() a software event PERF_COUNT_SW_BPF_OUTPUT with
  ``sample_type = PERF_SAMPLE_RAW`` bound to that CPU (pid -1: every task), mmap it
  (1 metadata page + ``page_cnt`` data pages, a power of two), store its fd in the map at
  key = cpu (bpf_perf_event_output(ctx, &map, BPF_F_CURRENT_CPU, ...) looks up the running
  CPU's slot), then enable it;
- the metadata page (struct perf_event_mmap_page) holds ``data_head`` (u64 at 1024, written
  by the kernel), ``data_tail`` (u64 at 1032, written by us: mapping it writable is what
  tells the kernel not to overwrite unread data), ``data_offset`` and ``data_size``;
- records (struct perf_event_header: u32 type, u16 misc, u16 size, then the body) are
  8-byte aligned and are *not* double-mapped: one that crosses the end of the data area
  continues at its start, so it is copied in two parts;
- PERF_RECORD_SAMPLE with only PERF_SAMPLE_RAW is ``header, u32 size, u8 data[size]``, and
  the kernel rounds ``4 + size`` up to a multiple of 8 (perf_prepare_sample): ``size`` is
  the BPF program's length plus 0-7 bytes of padding, and the true length is recorded
  nowhere. The padding is not zeroed: perf_output_sample() skips over it (__output_skip
  without a source), so it holds whatever an earlier record left in the ring (zeros only
  on a ring's first lap). See :class:`PerfBufferReader` for what this reader returns;
- when a CPU's ring is full the kernel drops the sample (bpf_perf_event_output returns
  -ENOSPC) and counts it; the count reaches us as a PERF_RECORD_LOST record (``header, u64
  id, u64 lost``) written *in front of the next sample that fits*, so a loss is only
  reported once that CPU produces again after the reader made room.

Wake-ups: with ``wakeup_events = 1`` (our default, as bcc's) the kernel wakes epoll/poll
waiters after every sample. The other choice, ``watermark`` bytes, wakes only once that
many bytes are unread, fewer wake-ups for a busy CPU, but a trickle sits in the ring until
the waiter's poll timeout: a drain thread that reads every ring on each pass should then
poll with a short timeout.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import struct
import sys
from collections.abc import Callable

from ecapture.live.bpfsys import (
    BPF_MAP_TYPE_PERF_EVENT_ARRAY,
    map_delete_u32,
    map_info,
    map_update_u32,
    syscall,
)

# perf_event_open(2) by machine, in the style of prereq._NR_BPF.
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "s390x": 331,
                       "ppc64le": 319}

# include/uapi/linux/perf_event.h
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_BPF_OUTPUT = 10
_PERF_SAMPLE_RAW = 1 << 10
_PERF_ATTR_SIZE_VER5 = 112  # every field we set exists since VER0; the rest stays zero
# perf_event_attr's flags are C bitfields in the u64 at offset 40, allocated from the least
# significant bit on little-endian machines and from the most significant on big-endian.
_LE = sys.byteorder == "little"
_ATTR_DISABLED = 1 << (0 if _LE else 63)
_ATTR_WATERMARK = 1 << (14 if _LE else 63 - 14)
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_EVENT_IOC_ENABLE = 0x2400  # _IO('$', 0)
_PERF_EVENT_IOC_DISABLE = 0x2401  # _IO('$', 1)
_PERF_RECORD_LOST = 2
_PERF_RECORD_SAMPLE = 9
# struct perf_event_header (u32 type, u16 misc, u16 size) read as one native u64.
_KIND_SHIFT, _SIZE_SHIFT = (0, 48) if _LE else (32, 0)

# struct perf_event_mmap_page, in u64 units: data_head, data_tail, data_offset, data_size.
_HEAD, _TAIL, _DATA_OFFSET, _DATA_SIZE = 1024 // 8, 1032 // 8, 1040 // 8, 1048 // 8

ONLINE = "/sys/devices/system/cpu/online"

# Memory ordering (the rules are spelled out above data_head/data_tail in perf_event.h).
# The kernel writes the records, then smp_wmb(), then data_head. A reader must load
# data_head, smp_rmb(), read the records, smp_mb(), then store data_tail; the kernel reads
# data_tail and smp_mb() before it reuses the space. On x86-64 both barriers are free for
# us: aligned 8-byte loads and stores are single-copy atomic (memoryview "Q" indexing is one
# fixed-size memcpy, i.e. one MOV), x86-TSO never reorders a load with a later load
# (the rmb) nor a store with earlier loads (the mb, in the direction we need). On arm64,
# ppc64le or riscv64 the head would need a load-acquire (LDAR / "dmb ishld") and the tail
# a store-release (STLR / "dmb ish" before it), which pure Python cannot emit: a native
# helper with C11 acquire/release atomics would be needed there.


def online_cpus(path: str = ONLINE) -> list[int]:
    """Parse a kernel CPU list such as ``0-3,5,7-8`` (/sys/devices/system/cpu/online)."""
    with open(path, encoding="ascii") as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def perf_event_open(attr: bytearray, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(38, f"perf_event_open(2): unknown syscall number on "
                          f"{platform.machine()}")
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    try:
        return syscall(nr, buf, pid, cpu, group_fd, flags)
    finally:
        del buf


def _bpf_output_attr(watermark: int) -> bytearray:
    """struct perf_event_attr for one BPF output event: a software event, created disabled,
    sampling every output (sample_period 1) as PERF_SAMPLE_RAW."""
    attr = bytearray(_PERF_ATTR_SIZE_VER5)
    flags = _ATTR_DISABLED | (_ATTR_WATERMARK if watermark else 0)
    struct.pack_into("=IIQQQQQI", attr, 0, _PERF_TYPE_SOFTWARE, len(attr),
                     _PERF_COUNT_SW_BPF_OUTPUT, 1, _PERF_SAMPLE_RAW, 0, flags,
                     watermark or 1)  # wakeup_watermark bytes, or wakeup_events = 1
    return attr


class _CpuRing:
    """One CPU's perf event, its mapping and views on it."""

    def __init__(self, cpu: int, fd: int, mm: mmap.mmap, page: int):
        self.cpu = cpu
        self.fd = fd
        self.mm = mm
        self._whole = memoryview(mm)
        self.meta = self._whole[:page].cast("Q")
        # data_offset/data_size exist since Linux 4.1; before that the data followed the
        # first page and filled the rest of the mapping.
        self.base = int(self.meta[_DATA_OFFSET]) or page
        self.size = int(self.meta[_DATA_SIZE]) or len(mm) - page
        self.mask = self.size - 1
        self._data = self._whole[self.base:self.base + self.size]
        self.data_q = self._data.cast("Q")
        self.data_i = self._data.cast("I")

    def release(self) -> None:
        for view in (self.data_i, self.data_q, self._data, self.meta, self._whole):
            view.release()


class PerfBufferReader:
    """Consume the per-CPU perf ring buffers behind one BPF perf event array.

    ``map_fd`` is the map's fd (bcc's ``BPF_PERF_OUTPUT(name)``: ``bpf[b"name"].map_fd``;
    do not also call bcc's ``open_perf_buffer`` on it: both would claim the same map
    slots). ``page_cnt`` data pages per CPU, a power of two. ``cpus`` defaults to the
    online CPUs. The reader owns the perf events it opens and the map slots it fills;
    close() empties those slots again. Not thread-safe: use it from one thread.

    Padding: perf pads every raw sample to ``4 + size`` = a multiple of 8 with 0-7 bytes
    and records only the padded size; the padding is stale ring content, not zeros. By
    default read() returns the *padded* bytes, exactly as bcc's callbacks receive them:
    the submitted bytes are a prefix, followed by up to 7 bytes of leftovers that a parser
    must ignore (fixed-size structs and explicit length fields do).
    To get exactly what the BPF program submitted, pass ``sample_size``: a function of the
    padded sample returning its true length from the program's own length fields (e.g.
    ``lambda b: HEADER + int.from_bytes(b[4:8], "little")``). Results outside the padding
    range (``len(b) - 7 .. len(b)``) are ignored, the padded bytes are returned and
    counted in ``untrimmed``. The function must not raise.

    ``watermark``: 0 (default) wakes epoll/poll waiters after every sample
    (``wakeup_events = 1``); a byte count wakes them only once that much is unread.
    """

    def __init__(self, map_fd: int, page_cnt: int, cpus: list[int] | None = None, *,
                 watermark: int = 0, sample_size: Callable[[bytes], int] | None = None):
        if page_cnt <= 0 or page_cnt & (page_cnt - 1):
            raise ValueError(f"page_cnt must be a power of two, not {page_cnt}")
        info = map_info(map_fd)
        if info.type != BPF_MAP_TYPE_PERF_EVENT_ARRAY:
            raise ValueError(f"map fd {map_fd} ({info.name!r}) is of type {info.type}, not a "
                             f"perf event array ({BPF_MAP_TYPE_PERF_EVENT_ARRAY})")
        self.cpus = online_cpus() if cpus is None else list(cpus)
        too_big = [c for c in self.cpus if c >= info.max_entries]
        if too_big:
            raise ValueError(f"perf event array {info.name!r} has {info.max_entries} slots; "
                             f"no slot for CPU {too_big[0]}")
        self.map_fd = map_fd
        self.page_cnt = page_cnt
        self._sample_size = sample_size
        self._rings: list[_CpuRing] = []
        self._in_map: list[int] = []
        self.closed = False
        #: Statistics: samples copied in two parts (they crossed the end of the ring), and
        #: samples whose sample_size() answer was out of range (returned padded).
        self.wrapped = 0
        self.untrimmed = 0
        page = mmap.PAGESIZE
        attr = _bpf_output_attr(watermark)
        try:
            for cpu in self.cpus:
                fd = perf_event_open(attr, -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
                try:
                    # Writable, so that our data_tail is honoured (a read-only mapping
                    # makes the kernel overwrite old data instead of dropping new data).
                    mm = mmap.mmap(fd, (1 + page_cnt) * page, access=mmap.ACCESS_WRITE)
                except BaseException:
                    os.close(fd)
                    raise
                self._rings.append(_CpuRing(cpu, fd, mm, page))
                map_update_u32(map_fd, cpu, fd)
                self._in_map.append(cpu)
                fcntl.ioctl(fd, _PERF_EVENT_IOC_ENABLE, 0)
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        """The perf event fds, one per CPU (in ``cpus`` order), for epoll/poll. Unlike a
        ring buffer's fd they are edge-like even under level-triggered epoll: perf_poll()
        reports the wake-ups that happened since the last poll and clears them, not
        whether data is unread. read() always drains every ring to its head, which is
        what makes this safe; a reader that stopped early would have to read again
        without waiting."""
        return [r.fd for r in self._rings]

    def pending_bytes(self) -> int:
        """Unread bytes over all CPUs' rings (record headers and padding included)."""
        return sum(int(r.meta[_HEAD] - r.meta[_TAIL]) for r in self._rings)

    def read(self) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]]]:
        """Copy out every record the CPUs' rings hold and free their space.

        Returns ``(samples, lost)``: samples as ``(cpu, bytes)``, in order within each
        CPU, CPUs one after another (perf gives no order across CPUs); and, from
        PERF_RECORD_LOST, ``(cpu, count)`` of samples the kernel dropped on that CPU
        because its ring was full. Other record types are skipped. Each ring's data_tail
        is written once, after its batch is copied."""
        if self.closed:
            raise ValueError("read from a closed PerfBufferReader")
        samples: list[tuple[int, bytes]] = []
        lost: list[tuple[int, int]] = []
        trim = self._sample_size
        append = samples.append
        sample_kind, lost_kind = _PERF_RECORD_SAMPLE, _PERF_RECORD_LOST  # locals: faster
        kind_shift, size_shift = _KIND_SHIFT, _SIZE_SHIFT
        for r in self._rings:
            head = r.meta[_HEAD]  # then smp_rmb(): free on x86 (see above)
            pos = tail = r.meta[_TAIL]
            if pos == head:
                continue
            cpu, mm, base, size, mask = r.cpu, r.mm, r.base, r.size, r.mask
            data_q, data_i = r.data_q, r.data_i
            while pos < head:
                off = pos & mask
                h = data_q[off >> 3]  # type (u32), misc (u16), size (u16)
                rec_size = (h >> size_shift) & 0xFFFF
                if rec_size < 8 or rec_size > head - pos:
                    raise RuntimeError(f"corrupt perf record on CPU {cpu} at {pos}: "
                                       f"size {rec_size}")
                kind = (h >> kind_shift) & 0xFFFFFFFF
                if kind == sample_kind:
                    raw = data_i[((off + 8) & mask) >> 2]
                    if raw + 12 > rec_size:
                        raise RuntimeError(f"corrupt perf sample on CPU {cpu} at {pos}: "
                                           f"raw size {raw} in a {rec_size}-byte record")
                    s = (off + 12) & mask
                    e = s + raw
                    if e <= size:
                        data = mm[base + s:base + e]
                    else:  # crosses the end of the ring: the tail part is at its start
                        data = mm[base + s:base + size] + mm[base:base + e - size]
                        self.wrapped += 1
                    if trim is not None:
                        n = trim(data)
                        if n != raw:
                            if raw - 7 <= n < raw:
                                data = data[:n]
                            else:
                                self.untrimmed += 1
                    append((cpu, data))
                elif kind == lost_kind:
                    lost.append((cpu, int(data_q[((off + 16) & mask) >> 3])))
                pos += rec_size
            if pos != tail:
                r.meta[_TAIL] = pos  # after smp_mb(): free on x86 (see above)
        return samples, lost

    def close(self) -> None:
        """Empty our map slots (so the BPF program stops writing to these rings), disable
        and close the perf events, unmap the rings. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        errors: list[OSError] = []
        for cpu in self._in_map:
            try:
                map_delete_u32(self.map_fd, cpu)
            except OSError as e:  # ENOENT: someone else emptied or replaced it already
                if e.errno != 2:
                    errors.append(e)
        self._in_map = []
        for r in self._rings:
            try:
                fcntl.ioctl(r.fd, _PERF_EVENT_IOC_DISABLE, 0)
            except OSError as e:
                errors.append(e)
            r.release()
            r.mm.close()
            os.close(r.fd)
        self._rings = []
        if errors:
            raise errors[0]

    def __enter__(self) -> PerfBufferReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

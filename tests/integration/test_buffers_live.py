"""Live tests of the mmap readers of BPF ring buffers and perf buffers (ecapture/live/
ringbuf.py, perfbuf.py).

Ground truth: a small bcc program on the rarely used tracepoint syscalls:sys_enter_getppid
emits one event per getppid() call of one chosen process: a 16-byte header (sequence number
from a kernel counter, payload length, CPU, check word) and a payload whose length varies
with the sequence number and whose bytes depend on both. The test makes the calls itself
(a writer thread of this process, or a child process for real parallelism on another CPU),
so it knows exactly what was sent, and the program counts the outputs the kernel refused.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

from ecapture.live.bccload import load_bcc
from ecapture.live.bpfsys import map_info
from ecapture.live.perfbuf import PerfBufferReader, online_cpus
from ecapture.live.ringbuf import RingBufferReader

pytestmark = pytest.mark.ecapture_module("buffers")
ring_only = pytest.mark.requires_kernel(">=5.8")

PROGRAM = r"""
struct ev {
    u32 seq;    /* from counters[0]: the order of the getppid() calls */
    u32 len;    /* payload bytes after this header */
    u32 cpu;
    u32 check;  /* seq ^ 0xA5A5A5A5 */
    u8 data[MAXLEN];
};
struct small {  /* mode 1: a reserved record, discarded when seq % 3 == 0 */
    u32 seq, len, cpu, check;
    u8 data[SMALL];
};
BPF_PERCPU_ARRAY(scratch, struct ev, 1);
BPF_ARRAY(config, u64, 4);    /* 0: tgid, 1: fixed payload length or 0, 2: mode, 3: no fill */
BPF_ARRAY(counters, u64, 2);  /* 0: next seq, 1: outputs the kernel refused */
#ifdef USE_RING
BPF_RINGBUF_OUTPUT(events, PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int k0 = 0, k1 = 1, k2 = 2, k3 = 3;
    u64 *tgid = config.lookup(&k0);
    if (!tgid || (bpf_get_current_pid_tgid() >> 32) != *tgid)
        return 0;
    u64 *fixed = config.lookup(&k1), *mode = config.lookup(&k2), *nofill = config.lookup(&k3);
    u64 *next = counters.lookup(&k0), *failed = counters.lookup(&k1);
    struct ev *e = scratch.lookup(&k0);
    if (!fixed || !mode || !nofill || !next || !failed || !e)
        return 0;
    /* One thread of the chosen process makes the calls, one at a time, so a plain
     * increment is exact; a fetch-and-add whose result is used needs kernel 5.12. */
    u32 seq = (u32)*next;
    *next = seq + 1;
    u32 cpu = bpf_get_smp_processor_id();
#ifdef USE_RING
    if (*mode == 1) {
        struct small *s = events.ringbuf_reserve(sizeof(struct small));
        if (!s) {
            __sync_fetch_and_add(failed, 1);
            return 0;
        }
        s->seq = seq; s->len = SMALL; s->cpu = cpu; s->check = seq ^ 0xA5A5A5A5;
        for (u32 i = 0; i < SMALL; i++)
            s->data[i] = (u8)(seq + SMALL + i);
        if (seq % 3 == 0)
            events.ringbuf_discard(s, 0);
        else
            events.ringbuf_submit(s, 0);
        return 0;
    }
#endif
    u32 len = *fixed ? (u32)*fixed : (seq * 2654435761u) % (MAXLEN + 1);
    asm volatile("" : "+r"(len));  /* keep the bound check below for the verifier */
    if (len > MAXLEN)
        len = MAXLEN;
    e->seq = seq; e->len = len; e->cpu = cpu; e->check = seq ^ 0xA5A5A5A5;
    if (!*nofill) {
        u32 start = seq + len;
#pragma clang loop unroll(disable) vectorize(disable)
        for (u32 i = 0; i < MAXLEN; i++) {
            if (i >= len)
                break;
            u32 j = i;
            asm volatile("" : "+r"(j));  /* clang would drop the index check otherwise */
            if (j >= MAXLEN)
                break;
            e->data[j] = (u8)(start + j);
        }
    }
    u64 size = sizeof(*e) - MAXLEN + (u64)len;
    asm volatile("" : "+r"(size));
    if (size > sizeof(*e))
        return 0;
#ifdef USE_RING
    int rc = events.ringbuf_output(e, size, 0);
#else
    int rc = events.perf_submit(args, e, size);
#endif
    if (rc)
        __sync_fetch_and_add(failed, 1);
    return 0;
}
"""

HDR = 16
SMALL = 40
CHECK = 0xA5A5A5A5
PAGE = mmap.PAGESIZE


def payload_len(seq: int, maxlen: int) -> int:
    """The program's length for ``seq`` (u32 arithmetic, as in C)."""
    return ((seq * 2654435761) & 0xFFFFFFFF) % (maxlen + 1)


class Program:
    """The compiled program, its config and counters, and its events map."""

    def __init__(self, ring: bool, maxlen: int, pages: int = 0):
        bcc = load_bcc()
        flags = [f"-DMAXLEN={maxlen}", f"-DSMALL={SMALL}"]
        if ring:
            flags += ["-DUSE_RING", f"-DPAGES={pages}"]
        self.bpf: Any = bcc.BPF(text=PROGRAM.encode(), cflags=flags)
        self.ring = ring
        self.maxlen = maxlen
        self.pages = pages
        self.fd: int = self.bpf[b"events"].map_fd
        self.table = self.bpf[b"events"]
        self._pattern = bytes(range(256)) * ((maxlen + SMALL) // 256 + 2)

    def _set(self, name: bytes, index: int, value: int) -> None:
        t = self.bpf[name]
        t[t.Key(index)] = t.Leaf(value)

    def start(self, tgid: int, *, fixed: int = 0, mode: int = 0, fill: bool = True) -> None:
        """Count from seq 0 and emit events for ``tgid`` from now on."""
        self._set(b"config", 0, 0)
        self._set(b"counters", 0, 0)
        self._set(b"counters", 1, 0)
        self._set(b"config", 1, fixed)
        self._set(b"config", 2, mode)
        self._set(b"config", 3, 0 if fill else 1)
        self._set(b"config", 0, tgid)

    def stop(self) -> None:
        self._set(b"config", 0, 0)

    def sent(self) -> int:
        t = self.bpf[b"counters"]
        return int(t[t.Key(0)].value)

    def failed(self) -> int:
        t = self.bpf[b"counters"]
        return int(t[t.Key(1)].value)

    def check(self, rec: bytes, *, padded: bool = False, fixed: int = 0,
              mode: int = 0) -> tuple[int, int]:
        """Verify one event byte for byte; return (seq, cpu). ``padded``: a perf sample as
        perf delivers it: 0-7 bytes after the submitted ones, stale ring content (perf skips
        over the padding without writing it)."""
        seq, ln, cpu, check = struct.unpack_from("<IIII", rec)
        assert check == seq ^ CHECK, rec[:HDR].hex()
        want = SMALL if mode == 1 else fixed or payload_len(seq, self.maxlen)
        assert ln == want, (seq, ln, want)
        if padded:
            assert len(rec) == ((HDR + ln + 4 + 7) & ~7) - 4, (seq, ln, len(rec))
        else:
            assert len(rec) == HDR + ln, (seq, ln, len(rec))
        start = (seq + ln) & 0xFF
        assert rec[HDR:HDR + ln] == self._pattern[start:start + ln], seq
        return seq, cpu

    def close(self) -> None:
        self.stop()
        self.bpf.cleanup()


@pytest.fixture
def programs() -> Iterator[Callable[..., Program]]:
    made: list[Program] = []

    def make(ring: bool, maxlen: int = 1000, pages: int = 0) -> Program:
        made.append(Program(ring, maxlen, pages))
        return made[-1]

    yield make
    for p in made:
        p.close()


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this thread on one CPU (perf rings are per CPU: a burst fills one ring)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def burst(n: int) -> None:
    getppid = os.getppid
    for _ in range(n):
        getppid()


# -- writers: who calls getppid() -----------------------------------------------------------
class Writer(Protocol):
    pid: int

    def send(self, n: int) -> None: ...
    def close(self) -> None: ...


class ThreadWriter:
    """A thread of this process calls getppid() in the bursts send() queues."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._q: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while n := self._q.get():
            burst(n)

    def send(self, n: int) -> None:
        self._q.put(n)

    def close(self) -> None:
        self._q.put(0)
        self._t.join(30)


CHILD = """
import os, sys
getppid = os.getppid
sys.stdout.write("ready\\n"); sys.stdout.flush()
for line in sys.stdin.buffer:
    n = int(line)
    if not n:
        break
    for _ in range(n):
        getppid()
"""


class ProcessWriter:
    """A child process calls getppid() in the bursts send() writes to its stdin: the kernel
    writes events on another CPU while this process reads them (no shared GIL)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n"
        self.pid = self.proc.pid

    def send(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"%d\n" % n)
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.send(0)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def pump(writer: Writer, n: int, window: int, step: int, fds: list[int],
         drain: Callable[[], int], stall: float = 30.0) -> None:
    """Have ``writer`` make ``n`` getppid() calls in bursts of ``step``, never more than
    ``window`` calls ahead of the events ``drain()`` (which returns how many it read) has
    seen, and drain concurrently, waiting on ``fds`` with epoll. With window >= n there is
    no flow control: the ring may overflow."""
    ep = select.epoll()
    for fd in fds:
        ep.register(fd, select.EPOLLIN)
    sent = seen = 0
    last = time.monotonic()
    try:
        while seen < n:
            while sent < n and sent - seen + step <= window:
                k = min(step, n - sent)
                writer.send(k)
                sent += k
            ep.poll(0.05)
            got = drain()
            seen += got
            if got:
                last = time.monotonic()
            elif sent == n and window >= n and time.monotonic() - last > 1.0:
                return  # no flow control: the ring may have dropped some; stop when idle
            assert time.monotonic() - last < stall, f"stalled at {seen}/{n} (sent {sent})"
    finally:
        ep.close()


def writer_of(kind: str) -> Writer:
    return ThreadWriter() if kind == "thread" else ProcessWriter()


# -- ring buffer ----------------------------------------------------------------------------
@ring_only
@pytest.mark.parametrize(("kind", "n"), [("thread", 200_000), ("process", 100_000)])
def test_ring_every_event_once_in_order(programs: Callable[..., Program], kind: str, n: int,
                                        request: pytest.FixtureRequest) -> None:
    prog = programs(ring=True, maxlen=1000, pages=16)  # 64 KiB: ~1000 laps
    reader = RingBufferReader(prog.fd, 16 * PAGE)
    request.addfinalizer(reader.close)
    writer = writer_of(kind)
    seqs: list[int] = []

    def drain() -> int:
        batch = reader.read()
        for rec in batch:
            seqs.append(prog.check(rec)[0])
        return len(batch)

    try:
        prog.start(writer.pid)
        # At most window records (<= 1000 + 24 bytes each) are ever in the ring.
        pump(writer, n, window=60, step=15, fds=[reader.fileno()], drain=drain)
    finally:
        prog.stop()
        writer.close()
    assert prog.sent() == n and prog.failed() == 0
    assert seqs == list(range(n))  # one writer: submission order is seq order
    assert reader.pending_bytes() == 0 and reader.read() == []
    consumed = reader._cons_q[0]
    assert consumed > 500 * reader.data_size  # it wrapped around many times
    # Figures for the junit report (the kernel matrix keeps it).
    request.node.user_properties += [("ring_mib", round(consumed / 2**20)),
                                     ("busy_stops", reader.busy_stops)]


@ring_only
def test_ring_data_size_from_kernel_and_wakeup(programs: Callable[..., Program]) -> None:
    prog = programs(ring=True, maxlen=100, pages=4)
    assert map_info(prog.fd).max_entries == 4 * PAGE
    with pytest.raises(ValueError, match="has 16384 data bytes"):
        RingBufferReader(prog.fd, 8 * PAGE)
    with RingBufferReader(prog.fd) as reader:
        assert reader.data_size == 4 * PAGE
        ep = select.epoll()
        ep.register(reader.fileno(), select.EPOLLIN)
        assert ep.poll(0) == [] and reader.pending_bytes() == 0 and reader.read() == []
        prog.start(os.getpid())
        burst(3)
        prog.stop()
        assert ep.poll(5) == [(reader.fileno(), select.EPOLLIN)]
        assert reader.pending_bytes() == sum(
            (HDR + payload_len(s, 100) + 8 + 7) & ~7 for s in range(3))
        assert [prog.check(r)[0] for r in reader.read()] == [0, 1, 2]
        assert ep.poll(0) == [] and reader.pending_bytes() == 0
        ep.close()
    assert reader.closed


@ring_only
def test_ring_skips_discarded_records(programs: Callable[..., Program]) -> None:
    prog = programs(ring=True, maxlen=100, pages=64)
    n = 3000  # 3000 * 64 bytes: fits in 256 KiB, read in one go
    with RingBufferReader(prog.fd) as reader:
        prog.start(os.getpid(), mode=1)
        burst(n)
        prog.stop()
        got = [prog.check(r, mode=1)[0] for r in reader.read()]
        assert got == [s for s in range(n) if s % 3]
        assert reader.discarded == n // 3 and prog.failed() == 0
        assert reader.pending_bytes() == 0


@ring_only
def test_ring_max_bytes_batches(programs: Callable[..., Program]) -> None:
    prog = programs(ring=True, maxlen=1000, pages=256)
    n = 1500
    with RingBufferReader(prog.fd) as reader:
        prog.start(os.getpid())
        burst(n)
        prog.stop()
        seqs: list[int] = []
        while batch := reader.read(max_bytes=4000):
            size = sum(map(len, batch))
            assert size <= 4000 or len(batch) == 1
            seqs += [prog.check(r)[0] for r in batch]
        assert seqs == list(range(n)) and prog.failed() == 0


@ring_only
def test_ring_overflow_loses_whole_events_only(programs: Callable[..., Program]) -> None:
    prog = programs(ring=True, maxlen=1000, pages=1)  # 4 KiB: a handful of events
    with RingBufferReader(prog.fd) as reader:
        # A burst with nobody reading: the kernel refuses what does not fit, the program
        # counts it (a ring buffer has no lost-record mechanism of its own).
        prog.start(os.getpid())
        burst(5000)
        first = [prog.check(r)[0] for r in reader.read()]
        assert first == sorted(set(first)) and first[0] == 0
        assert len(first) + prog.failed() == prog.sent() == 5000
        assert prog.failed() > 4000
        # Then reading while a thread writes as fast as it can, no flow control.
        seqs: list[int] = []

        def drain() -> int:
            batch = reader.read()
            seqs.extend(prog.check(r)[0] for r in batch)
            return len(batch)

        writer = ThreadWriter()
        try:
            pump(writer, 50_000, window=50_000, step=500, fds=[reader.fileno()], drain=drain)
        finally:
            writer.close()
        prog.stop()
        seqs += [prog.check(r)[0] for r in reader.read()]
        assert seqs == sorted(set(seqs)) and seqs[0] >= 5000
        assert len(first) + len(seqs) + prog.failed() == prog.sent() == 55_000


def test_ring_reader_over_hand_made_records() -> None:
    """Busy and discarded records, and a record that crosses the end of the data area,
    in anonymous mappings laid out like the kernel's (the data area written twice, as the
    double mapping shows it)."""
    size = PAGE
    consumer = mmap.mmap(-1, PAGE)
    ro = mmap.mmap(-1, PAGE + 2 * size)
    data = memoryview(ro)[PAGE:]

    def put(pos: int, payload: bytes, bits: int = 0) -> int:
        rec = struct.pack("<II", len(payload) | bits, 0) + payload
        for i, b in enumerate(rec):
            off = (pos + i) % size
            data[off] = data[off + size] = b  # the two mappings of the same pages
        return pos + ((len(payload) + 8 + 7) & ~7)

    def produce(pos: int) -> None:
        ro[0:8] = struct.pack("<Q", pos)

    start = size - 24  # the third record crosses the end
    struct.pack_into("<Q", consumer, 0, start)
    pos = put(start, b"first")
    p_busy = pos
    pos = put(pos, b"x" * 20, bits=1 << 31)
    pos = put(pos, b"discarded", bits=1 << 30)
    pos = put(pos, b"after")
    produce(pos)
    reader = RingBufferReader._over(consumer, ro, size)
    try:
        assert reader.read() == [b"first"]
        assert reader._cons_q[0] == p_busy and reader.busy_stops == 1
        put(p_busy, b"x" * 20)  # committed now
        assert reader.read() == [b"x" * 20, b"after"]
        assert reader.discarded == 1 and reader.pending_bytes() == 0
        assert reader._cons_q[0] == pos and pos > size  # positions run on past the size
    finally:
        data.release()
        reader.close()


# -- perf buffer ----------------------------------------------------------------------------
def true_size(sample: bytes) -> int:
    """The program's own length field: header + payload length."""
    return HDR + int.from_bytes(sample[4:8], "little")


@pytest.mark.parametrize(("kind", "n"), [("thread", 200_000), ("process", 100_000)])
def test_perf_every_event_once_in_order_per_cpu(programs: Callable[..., Program], kind: str,
                                                n: int, request: pytest.FixtureRequest) -> None:
    prog = programs(ring=False, maxlen=1000)
    reader = PerfBufferReader(prog.fd, 16, sample_size=true_size)  # 64 KiB per CPU
    request.addfinalizer(reader.close)
    writer = writer_of(kind)
    per_cpu: dict[int, list[int]] = {c: [] for c in reader.cpus}
    lost: list[tuple[int, int]] = []

    def drain() -> int:
        samples, lost_now = reader.read()
        lost.extend(lost_now)
        for cpu, rec in samples:
            seq, ev_cpu = prog.check(rec)  # exact bytes: trimmed by true_size
            assert ev_cpu == cpu
            per_cpu[cpu].append(seq)
        return len(samples)

    try:
        prog.start(writer.pid)
        pump(writer, n, window=50, step=10, fds=reader.fds(), drain=drain)
    finally:
        prog.stop()
        writer.close()
    assert lost == [] and prog.failed() == 0 and prog.sent() == n
    for seqs in per_cpu.values():
        assert seqs == sorted(seqs)
    assert sorted(s for seqs in per_cpu.values() for s in seqs) == list(range(n))
    assert reader.wrapped > 100 and reader.untrimmed == 0
    request.node.user_properties += [("per_cpu", [len(s) for s in per_cpu.values()]),
                                     ("wrapped", reader.wrapped)]


def test_perf_padding_and_trimming(programs: Callable[..., Program]) -> None:
    prog = programs(ring=False, maxlen=1000)
    prog.start(os.getpid())
    with PerfBufferReader(prog.fd, 64) as padded:
        ep = select.epoll()
        for fd in padded.fds():
            ep.register(fd, select.EPOLLIN)
        assert ep.poll(0) == []
        burst(100)
        assert ep.poll(5)  # woken (after every sample: wakeup_events = 1)
        samples, lost = padded.read()
        ep.close()
    with PerfBufferReader(prog.fd, 64, sample_size=true_size) as exact:
        burst(100)
        trimmed, lost2 = exact.read()
    prog.stop()
    assert lost == lost2 == []
    assert sorted(prog.check(r, padded=True)[0] for _, r in samples) == list(range(100))
    assert sorted(prog.check(r)[0] for _, r in trimmed) == list(range(100, 200))
    # Perf rounds 4 + size up to 8: most samples do carry padding.
    assert sum(len(r) != true_size(r) for _, r in samples) > 50


def test_perf_close_empties_the_map_slots(programs: Callable[..., Program],
                                          request: pytest.FixtureRequest) -> None:
    prog = programs(ring=False, maxlen=100)
    reader = PerfBufferReader(prog.fd, 1)
    request.addfinalizer(reader.close)
    assert len(reader.fds()) == len(online_cpus()) == len(reader.cpus)
    prog.start(os.getpid())
    burst(10)
    assert len(reader.read()[0]) == 10
    reader.close()
    reader.close()  # twice is fine
    burst(10)  # no perf event in the slots: bpf_perf_event_output fails (-ENOENT)
    assert prog.failed() == 10
    with PerfBufferReader(prog.fd, 1) as again:  # the slots can be filled again
        burst(10)
        assert [prog.check(r, padded=True)[0] for _, r in again.read()[0]] == list(
            range(20, 30))
    prog.stop()
    with pytest.raises(ValueError, match="power of two"):
        PerfBufferReader(prog.fd, 3)


def test_perf_overflow_reports_lost_records(programs: Callable[..., Program]) -> None:
    prog = programs(ring=False, maxlen=1000)
    cpu = online_cpus()[0]
    with PerfBufferReader(prog.fd, 1) as reader, pinned(cpu):  # 4 KiB per CPU
        got: list[int] = []
        lost_total = 0

        def drain() -> int:
            nonlocal lost_total
            samples, lost = reader.read()
            got.extend(prog.check(r, padded=True)[0] for _, r in samples)
            lost_total += sum(n for _, n in lost)
            return len(samples)

        prog.start(os.getpid())
        burst(5000)  # nobody reading
        drain()
        # The kernel reports a loss in front of the next sample that fits in the ring:
        # the drops at the end of the burst are only reported after one more event.
        burst(1)
        drain()
        assert lost_total > 4000
        assert len(got) + lost_total == prog.sent() == 5001
        # Reading while a thread writes as fast as it can (both CPUs: unpin it).
        os.sched_setaffinity(0, set(online_cpus()))
        writer = ThreadWriter()
        try:
            pump(writer, 50_000, window=50_000, step=500, fds=reader.fds(), drain=drain)
        finally:
            writer.close()
        for c in reader.cpus:  # flush any loss still pending on each CPU
            with pinned(c):
                burst(1)
        drain()
        prog.stop()
        assert len(got) + lost_total == prog.sent() == 55_001 + len(reader.cpus)
        assert lost_total == prog.failed()  # the kernel's count and the program's agree
        assert len(got) == len(set(got))

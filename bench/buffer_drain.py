"""Drain speed of BPF buffers: our mmap readers against bcc's callback-based polling.

usage: python bench/buffer_drain.py [--size BYTES] [--events N] [--rounds R]

Root + bcc. A bcc program on syscalls:sys_enter_getppid submits one event of --size bytes
(default 4096) per getppid() call of this process. Each round fills the buffer with N
events while nobody reads (not timed), then times draining all of them:

- ring  mmap:  RingBufferReader.read() (ecapture/live/ringbuf.py), one epoll_wait per batch
- ring  bcc:   BPF.ring_buffer_poll(0) with a callback copying each sample (ctypes.string_at),
               as ecapture/live/session.py does today
- perf  mmap:  PerfBufferReader.read() (ecapture/live/perfbuf.py), one epoll_wait per batch
- perf  bcc:   BPF.perf_buffer_poll(0) with the same kind of callback

Every reader ends with the same thing: a list of N bytes objects. --contended drains while
another thread of this process runs pure Python, as a decoding thread would: bcc's
callbacks then need the GIL once per event, our readers once per batch. The burst runs on one CPU
so that a perf buffer (one ring per CPU) holds it all. Prints figures only, the best and the
median of the rounds; no thresholds: compare runs made on the same machine (on a small VM
the rounds vary a lot, --contended ones most: they measure GIL hand-offs).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes  # noqa: TID251 - bcc's callbacks hand us ctypes pointers, as in session.py
import os
import select
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecapture.live.bccload import load_bcc  # noqa: E402
from ecapture.live.perfbuf import PerfBufferReader  # noqa: E402
from ecapture.live.ringbuf import RingBufferReader  # noqa: E402

PROGRAM = r"""
struct ev { u32 seq; u32 len; u8 data[SIZE - 8]; };
BPF_PERCPU_ARRAY(scratch, struct ev, 1);
BPF_ARRAY(config, u32, 1);   /* the tgid whose getppid() calls emit */
BPF_ARRAY(dropped, u64, 1);
#ifdef USE_RING
BPF_RINGBUF_OUTPUT(events, PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int zero = 0;
    u32 *tgid = config.lookup(&zero);
    if (!tgid || (bpf_get_current_pid_tgid() >> 32) != *tgid)
        return 0;
    struct ev *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    e->seq++;
    e->len = SIZE;
#ifdef USE_RING
    int rc = events.ringbuf_output(e, sizeof(*e), 0);
#else
    int rc = events.perf_submit(args, e, sizeof(*e));
#endif
    if (rc) {
        u64 *d = dropped.lookup(&zero);
        if (d)
            __sync_fetch_and_add(d, 1);
    }
    return 0;
}
"""


def pow2_pages(nbytes: int) -> int:
    pages = 1
    while pages * os.sysconf("SC_PAGE_SIZE") < nbytes:
        pages *= 2
    return pages


class Bench:
    def __init__(self, ring: bool, size: int, pages: int):
        bcc = load_bcc()
        flags = [f"-DSIZE={size}"] + (["-DUSE_RING", f"-DPAGES={pages}"] if ring else [])
        self.bpf: Any = bcc.BPF(text=PROGRAM.encode(), cflags=flags)
        self.fd: int = self.bpf[b"events"].map_fd
        cfg = self.bpf[b"config"]
        cfg[cfg.Key(0)] = cfg.Leaf(os.getpid())

    def dropped(self) -> int:
        t = self.bpf[b"dropped"]
        return int(t[t.Key(0)].value)

    def close(self) -> None:
        cfg = self.bpf[b"config"]
        cfg[cfg.Key(0)] = cfg.Leaf(0)
        self.bpf.cleanup()


def fill(n: int) -> None:
    os.sched_setaffinity(0, {0})
    try:
        getppid = os.getppid
        for _ in range(n):
            getppid()
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


class Busy:
    """A thread running pure Python while we drain, as a decoding thread would: whoever
    releases the GIL waits for it to come back (up to sys.getswitchinterval())."""

    def __init__(self) -> None:
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop:
            sum(range(1000))

    def __enter__(self) -> Busy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join()


CONTENDED = False


def timed(rounds: int, n: int, bench: Bench, drain: Callable[[], int],
          out: list[Any]) -> list[float]:
    """Seconds to drain n pre-filled events into ``out``, per round, after a warm-up round
    (first touches of the buffer's pages); ``out`` is emptied before each round."""
    times = []
    for i in range(rounds + 1):
        out.clear()
        fill(n)
        if bench.dropped():
            raise SystemExit("the buffer overflowed while filling: use fewer --events")
        got = 0
        with Busy() if CONTENDED else contextlib.nullcontext():
            t0 = time.perf_counter()
            while got < n:
                got += drain()
            t1 = time.perf_counter()
        if i:
            times.append(t1 - t0)
        if got != n:
            raise SystemExit(f"drained {got} events, expected {n}")
    return times


def epoll_of(fds: list[int]) -> select.epoll:
    ep = select.epoll()
    for fd in fds:
        ep.register(fd, select.EPOLLIN)
    return ep


def run_ring_mmap(args: argparse.Namespace, pages: int) -> list[float]:
    bench = Bench(True, args.size, pages)
    try:
        with RingBufferReader(bench.fd) as reader:
            ep = epoll_of([reader.fileno()])
            out: list[bytes] = []

            def drain() -> int:
                ep.poll(0)
                batch = reader.read()
                out.extend(batch)
                return len(batch)

            return timed(args.rounds, args.events, bench, drain, out)
    finally:
        bench.close()


def run_ring_bcc(args: argparse.Namespace, pages: int) -> list[float]:
    bench = Bench(True, args.size, pages)
    out: list[bytes] = []

    def on_event(_ctx: Any, data: Any, size: int) -> None:
        out.append(ctypes.string_at(data, size))

    try:
        bench.bpf[b"events"].open_ring_buffer(on_event)

        def drain() -> int:
            before = len(out)
            bench.bpf.ring_buffer_poll(0)
            return len(out) - before

        return timed(args.rounds, args.events, bench, drain, out)
    finally:
        bench.close()


def run_perf_mmap(args: argparse.Namespace, pages: int) -> list[float]:
    bench = Bench(False, args.size, 0)
    try:
        with PerfBufferReader(bench.fd, pages) as reader:
            ep = epoll_of(reader.fds())
            out: list[tuple[int, bytes]] = []

            def drain() -> int:
                ep.poll(0)
                samples, lost = reader.read()
                if lost:
                    raise SystemExit(f"perf buffer lost events: {lost}")
                out.extend(samples)
                return len(samples)

            return timed(args.rounds, args.events, bench, drain, out)
    finally:
        bench.close()


def run_perf_bcc(args: argparse.Namespace, pages: int) -> list[float]:
    bench = Bench(False, args.size, 0)
    out: list[bytes] = []

    def on_event(_cpu: int, data: Any, size: int) -> None:
        out.append(ctypes.string_at(data, size))

    def on_lost(count: int) -> None:
        raise SystemExit(f"perf buffer lost {count} events")

    try:
        bench.bpf[b"events"].open_perf_buffer(on_event, page_cnt=pages, lost_cb=on_lost)

        def drain() -> int:
            before = len(out)
            bench.bpf.perf_buffer_poll(0)
            return len(out) - before

        return timed(args.rounds, args.events, bench, drain, out)
    finally:
        bench.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="bytes per event (>= 16)")
    ap.add_argument("--events", type=int, default=0,
                    help="events per round (default: what 32 MiB holds, at most 100000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--contended", action="store_true",
                    help="drain while another thread runs Python (a busy decoder)")
    args = ap.parse_args()
    global CONTENDED
    CONTENDED = args.contended
    if args.size < 16 or args.size % 8:
        raise SystemExit("--size must be a multiple of 8, at least 16")
    record = (args.size + 8 + 7) & ~7  # the larger of ring (8-byte header) and perf (12)
    if not args.events:
        args.events = min(100_000, (32 << 20) // (record + 8) * 9 // 10)
    pages = pow2_pages(args.events * (record + 8) * 11 // 10)
    print(f"{args.events} events of {args.size} bytes per round, {args.rounds} rounds, "
          f"buffers of {pages} pages, CPUs {os.cpu_count()}, kernel {os.uname().release}"
          + (", a busy Python thread beside the reader" if args.contended else ""))
    print(f"{'reader':<12}{'events/s':>14}{'MB/s':>10}{'median ev/s':>14}"
          "   (best round; MB = 10^6 bytes)")
    mb = args.events * args.size / 1e6
    for name, run in (("ring mmap", run_ring_mmap), ("ring bcc", run_ring_bcc),
                      ("perf mmap", run_perf_mmap), ("perf bcc", run_perf_bcc)):
        times = run(args, pages)
        best, med = min(times), statistics.median(times)
        print(f"{name:<12}{args.events / best:>14,.0f}{mb / best:>10,.0f}"
              f"{args.events / med:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()

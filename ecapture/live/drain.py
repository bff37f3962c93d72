"""The drain thread: it only drains and tees.

It waits on every event buffer of a live session, copies out whole batches (reading the
buffers' shared memory, no callback per event), writes them to the recording first, and
hands them to the pipeline through a queue. Decoding, parsing and printing happen in the
main thread and may lag; the recording may not. The one other thing done here is what
cannot wait: looking up in /proc, while the socket still exists, the 4-tuples the kernel
could not give (``Module.observe``), recorded as facts before the event that needed them.

:class:`LiveSource` is the pipeline's side of the queue, a :class:`~ecapture.sources.Source`
like a recording.
"""

from __future__ import annotations

import collections
import contextlib
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ecapture import procnet
from ecapture.errors import EcaptureError
from ecapture.live.session import RINGBUF_CPU, LiveSession, Reader
from ecapture.record import Fact, Item, Lost, Record
from ecapture.record.writer import Writer
from ecapture.sources import CaptureStats

WAIT_S = 0.1  # longest wait for events: also how often drops are counted
DROPS_EVERY_NS = 100_000_000


class Drain(threading.Thread):
    def __init__(self, session: LiveSession, writer: Writer | None, stats: CaptureStats,
                 lookup: Callable[[int, int], Any] = procnet.lookup):
        super().__init__(name="ecapture-drain", daemon=True)
        self.session = session
        self.writer = writer
        self.stats = stats
        self.lookup = lookup
        self.error: BaseException | None = None
        self.started_ns = time.monotonic_ns()
        self.ended_ns: int | None = None
        self._stop_event = threading.Event()
        self._queue: collections.deque[list[Item]] = collections.deque()
        self._ready = threading.Condition()
        self._done = False
        self.backlog_bytes = 0  # queued for the pipeline, not yet taken
        self._dropped_seen: dict[int, int] = {}
        self._last_drops = 0

    # -- control (any thread) ---------------------------------------------------------
    def stop(self) -> None:
        """Stop capturing: drain what is left, close the recording, end the source."""
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    # -- the thread -----------------------------------------------------------------------
    def run(self) -> None:
        poller = select.epoll()
        try:
            for reader in self.session.readers:
                for fd in reader.fds():
                    poller.register(fd, select.EPOLLIN)
            while not self._stop_event.is_set():
                poller.poll(WAIT_S)
                self._drain()
            self._drain()  # what arrived before the stop
            self._count_drops()
            # No new events from here on; what raced in before the detach is still read.
            self.session.detach()
            self._drain()
        except BaseException as e:  # reported by the main thread, with the data kept
            self.error = e
        finally:
            poller.close()
            self.ended_ns = time.monotonic_ns()
            with contextlib.suppress(Exception):
                self.session.detach()
            self._finish()

    def _drain(self) -> None:
        now = time.monotonic_ns()
        batch: list[Item] = []
        for reader in self.session.readers:
            self._read(reader, now, batch)
        if now - self._last_drops >= DROPS_EVERY_NS:
            self._count_drops(batch=batch)
        if batch:
            self._deliver(batch)

    def _read(self, reader: Reader, now: int, batch: list[Item]) -> None:
        binding = reader.binding
        map_id = binding.map_id
        observe = binding.module.observe
        lookup = self.lookup
        counts = self.stats.maps[map_id]
        append = batch.append
        if reader.ring is not None:
            samples: Sequence[tuple[int, bytes]] = [
                (RINGBUF_CPU, data) for data in reader.ring.read()]
        elif reader.perf is not None:
            samples, lost = reader.perf.read()
            for cpu, count in lost:
                append(Lost(map_id, cpu, now, count))
                counts.lost += count
        else:
            return
        for cpu, data in samples:
            for what, fields in observe(data, lookup):
                append(Fact(map_id, now, what, fields))
                self.stats.facts += 1
            append(Record(map_id, cpu, now, data))
            counts.events += 1
            counts.bytes += len(data)

    def _count_drops(self, batch: list[Item] | None = None) -> None:
        """Ring buffers have no lost callback: the programs count failed outputs in a
        per-CPU "dropped" array; its increases become Lost items."""
        self._last_drops = time.monotonic_ns()
        out: list[Item] = [] if batch is None else batch
        for reader in self.session.readers:
            total = self.session.dropped(reader)
            map_id = reader.binding.map_id
            seen = self._dropped_seen.get(map_id, 0)
            if total > seen:
                out.append(Lost(map_id, RINGBUF_CPU, self._last_drops, total - seen))
                self.stats.maps[map_id].lost += total - seen
                self._dropped_seen[map_id] = total
        if batch is None and out:
            self._deliver(out)

    def _deliver(self, batch: list[Item]) -> None:
        if self.writer is not None:
            write = self.writer.write
            for item in batch:
                write(item)  # the tee: recorded raw, before any decoding
            self.writer.flush()
        size = sum(len(i.data) for i in batch if isinstance(i, Record))
        with self._ready:
            self._queue.append(batch)
            self.backlog_bytes += size
            self._ready.notify()

    def _finish(self) -> None:
        try:
            if self.writer is not None:
                if self.error is None:
                    self.writer.close({"capture": "stopped"})
                else:
                    with contextlib.suppress(EcaptureError, OSError):
                        self.writer.abort()
        except BaseException as e:
            self.error = self.error or e
        with self._ready:
            self._done = True
            self._ready.notify()

    # -- the pipeline's side --------------------------------------------------------------
    def take(self, timeout: float) -> list[Item] | None:
        """The next batch; [] if none came within ``timeout``; None once the capture has
        ended and everything was taken."""
        with self._ready:
            if not self._queue and not self._done:
                self._ready.wait(timeout)
            if self._queue:
                batch = self._queue.popleft()
                self.backlog_bytes -= sum(len(i.data) for i in batch if isinstance(i, Record))
                return batch
            return None if self._done else []


class LiveSource:
    """A live capture as a :class:`~ecapture.sources.Source`: the drain thread's batches,
    with empty ones when nothing came for a while, so the pipeline still ticks."""

    def __init__(self, drain: Drain, metadata: dict[str, Any]):
        self.drain = drain
        self.metadata = metadata

    def batches(self) -> Iterator[Sequence[Item]]:
        while True:
            batch = self.drain.take(WAIT_S)
            if batch is None:
                return
            yield batch

    def now_ns(self) -> int | None:
        return time.monotonic_ns()

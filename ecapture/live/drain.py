"""The drain thread: it only drains and records.

It waits on every event buffer of a live session, copies out whole batches (reading the
buffers' shared memory, no callback per event) and writes them to the recording. The
output (decoding, parsing, printing) is a replay of that recording in another process
(:mod:`ecapture.live.output`), so it may lag while the recording may not. The one other
thing done here is what cannot wait: looking up in /proc, while the socket still exists,
the 4-tuples the kernel could not give (``Module.observe``), recorded as facts before the
event that needed them.

The thread runs at a higher scheduling priority than the programs it watches: on a busy
host they would otherwise fill the buffers faster than it gets the CPU to empty them.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ecapture import procnet
from ecapture.live.newprocs import NewProcesses
from ecapture.live.output import OutputProcess
from ecapture.live.session import RINGBUF_CPU, LiveSession, Reader
from ecapture.record import Fact, Item, Lost, Record
from ecapture.record.writer import Writer
from ecapture.sources import CaptureStats

WAIT_S = 0.1  # longest wait for events: also how often drops are counted
DROPS_EVERY_NS = 100_000_000
NICE = -10


class Drain(threading.Thread):
    def __init__(self, session: LiveSession, writer: Writer, stats: CaptureStats,
                 output: OutputProcess | None = None,
                 lookup: Callable[[int, int], Any] = procnet.lookup):
        super().__init__(name="ecapture-drain", daemon=True)
        self.session = session
        self.writer = writer
        self.stats = stats
        self.output = output
        self.lookup = lookup
        self.error: BaseException | None = None
        self.started_ns = time.monotonic_ns()
        self.ended_ns: int | None = None
        self._stop_event = threading.Event()
        self._dropped_seen: dict[int, int] = {}
        self._last_drops = 0
        # Processes started during the capture may bring library files to attach to.
        self.newprocs = NewProcesses(session) if session.module.watching else None

    def stop(self) -> None:
        """Stop capturing: drain what is left, detach, close the recording."""
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def run(self) -> None:
        with contextlib.suppress(OSError):  # not root, or not Linux: keep the default
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        poller = select.epoll()
        if self.newprocs is not None:
            self.newprocs.start()
        try:
            for reader in self.session.readers:
                for fd in reader.fds():
                    poller.register(fd, select.EPOLLIN)
            while not self._stop_event.is_set():
                poller.poll(WAIT_S)
                self._drain()
            if self.newprocs is not None:
                self.newprocs.stop()
                self.newprocs.join()
            self._drain()  # what arrived before the stop
            drops: list[Item] = []
            self._count_drops(drops)
            self._write(drops)
            # No new events from here on; what raced in before the detach is still read.
            self.session.detach()
            self._drain()
        except BaseException as e:  # reported by the main thread, with the data kept
            self.error = e
        finally:
            if self.newprocs is not None:
                self.newprocs.stop()
            poller.close()
            self.ended_ns = time.monotonic_ns()
            with contextlib.suppress(Exception):
                self.session.detach()
            self._close_recording()

    def _drain(self) -> None:
        now = time.monotonic_ns()
        batch: list[Item] = []
        for reader in self.session.readers:
            self._read(reader, now, batch)
        facts = self.session.facts
        if facts and self.session.readers:
            map_id = self.session.readers[0].binding.map_id  # the module's first map's
            while facts:
                what, fields = facts.popleft()
                batch.append(Fact(map_id, now, what, fields))
                self.stats.facts += 1
        if now - self._last_drops >= DROPS_EVERY_NS:
            self._count_drops(batch)
        self._write(batch)

    def _write(self, batch: list[Item]) -> None:
        if not batch:
            return
        write = self.writer.write
        for item in batch:
            write(item)
        self.writer.flush()
        if self.output is not None:
            self.output.notify()
            self.output.give_back()

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
        newprocs = self.newprocs
        for cpu, data in samples:
            for what, fields in observe(data, lookup):
                append(Fact(map_id, now, what, fields))
                self.stats.facts += 1
                if newprocs is not None and what == "process":
                    newprocs.seen(fields)
            append(Record(map_id, cpu, now, data))
        counts.events += len(samples)
        counts.bytes += sum(len(data) for _, data in samples)

    def _count_drops(self, batch: list[Item]) -> None:
        """Ring buffers have no lost callback: the programs count failed outputs in a
        per-CPU "dropped" array; its increases become Lost items."""
        self._last_drops = time.monotonic_ns()
        for reader in self.session.readers:
            total = self.session.dropped(reader)
            map_id = reader.binding.map_id
            seen = self._dropped_seen.get(map_id, 0)
            if total > seen:
                batch.append(Lost(map_id, RINGBUF_CPU, self._last_drops, total - seen))
                self.stats.maps[map_id].lost += total - seen
                self._dropped_seen[map_id] = total

    def _close_recording(self) -> None:
        try:
            if self.error is None:
                self.writer.close({"capture": "stopped"})
            else:
                self.writer.abort()
        except BaseException as e:
            self.error = self.error or e

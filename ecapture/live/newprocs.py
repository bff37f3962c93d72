"""Processes that start during a capture: attach to the library files they bring.

A container started after the capture maps its own copy of a library, a file no probe is
on (uprobes attach to inodes). The kernel program reports each exec of a traced process;
the drain thread records where that process runs and hands its pid here, so that nothing
slow happens on the drain thread. This thread reads the process's mappings while its
dynamic loader works, a few times over the first quarter second, asks the module for the
probes of any file not seen before and attaches them to the program already loaded. What
it did is recorded as an "attached" fact, with how long after the exec the probes went on:
what the process sent before then is not captured, and the recording says so.

Live layer: drives the session; the module decides what to attach (``new_targets``).
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ecapture.errors import AttachError
from ecapture.live.session import LiveSession
from ecapture.modules.base import NewTarget, Target

#: When to read a new process's mappings, in ms after its exec reached us: the loader maps
#: a program's libraries within a few ms, and every ms the probes go on later is a ms of
#: the program's first TLS calls lost, so each of the first 12 ms is looked at (a read of
#: a young process's maps costs some 0.1 ms); a program that loads one later (dlopen) is
#: looked at again when its first connection or TLS call shows up.
POLL_MS = (*range(13), 16, 20, 24, 32, 48, 64, 128, 256)
#: processes being watched at once; more execs than that (a build) are counted, not read
MAX_WATCHED = 512
#: how often, at most, the count of processes not looked at is recorded
SKIPPED_EVERY_NS = 1_000_000_000


class NewProcesses(threading.Thread):
    def __init__(self, session: LiveSession):
        super().__init__(name="ecapture-newprocs", daemon=True)
        self.session = session
        self.module = session.module
        self.skipped = 0  # processes not looked at: too many at once
        self.looked = 0
        self._inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        # Each counter has one writer, so no lock: the drain thread counts what it queues,
        # this thread what it is done with.
        self._queued = 0
        self._done = 0
        self._unsaid: dict[str, Any] | None = None  # the last process skipped, not recorded
        self._unsaid_count = 0
        self._said_ns = 0

    def seen(self, fields: dict[str, Any]) -> None:
        """From the drain thread: a "process" fact. An exec is watched for a while; a
        process seen for the first time otherwise is looked at once. Past MAX_WATCHED at
        once, a process is not looked at, and the recording says how many were not."""
        now = time.monotonic_ns()
        if self._queued - self._done >= MAX_WATCHED:
            self.skipped += 1
            self._unsaid_count += 1
            self._unsaid = fields
            if now - self._said_ns >= SKIPPED_EVERY_NS:
                self._say_skipped(now)
            return
        self._queued += 1
        self._inbox.put({**fields, "received_ns": now})

    def _say_skipped(self, now: int) -> None:
        """Record the processes skipped since last said, as one "attached" fact that names
        the last of them and refuses for all of them."""
        fields, count = self._unsaid, self._unsaid_count
        if fields is None or not count:
            return
        self._unsaid, self._unsaid_count, self._said_ns = None, 0, now
        self.session.facts.append(("attached", {
            "ts_ns": now, "pid": int(fields["pid"]), "comm": str(fields.get("comm", "")),
            "path": "", "mntns": fields.get("mntns"), "version": None, "build_id": None,
            "after_ms": 0.0, "probes": 0, "skipped": count,
            "refused": f"more than {MAX_WATCHED} processes were starting at once: their "
                       "mappings were not read, so a library file that only they map is "
                       "not attached"}))

    def stop(self) -> None:
        """From the drain thread: stop, after recording what was skipped and not said."""
        self._say_skipped(time.monotonic_ns())
        self._inbox.put(None)

    def run(self) -> None:
        # (when, order, pid, fields, polls done): the next look at each watched process
        due: list[tuple[int, int, int, dict[str, Any], int]] = []
        order = 0
        while True:
            timeout = None
            if due:
                timeout = max(0.0, (due[0][0] - time.monotonic_ns()) / 1e9)
            try:
                fields = self._inbox.get(timeout=timeout)
            except queue.Empty:
                fields = {}
            if fields is None:
                return
            if fields:
                order += 1
                heapq.heappush(due, (time.monotonic_ns(), order, int(fields["pid"]), fields, 0))
            now = time.monotonic_ns()
            while due and due[0][0] <= now:
                _, n, pid, facts, polls = heapq.heappop(due)
                found = self._look(pid, facts, polls == 0)
                polls += 1
                if found or not facts.get("exec") or polls >= len(POLL_MS):
                    self._done += 1
                    continue
                start = int(facts.get("received_ns", now))
                heapq.heappush(due, (start + POLL_MS[polls] * 1_000_000, n, pid, facts, polls))

    def _look(self, pid: int, fields: dict[str, Any], first: bool) -> bool:
        """Whether the process maps the module's files yet; attaches to new ones. At an
        exec's first look, first to the files of its mount namespace if that is new."""
        self.looked += 1
        if first and fields.get("exec"):
            self._attach(pid, fields, lambda: self.module.namespace_targets(pid))
        return self._attach(pid, fields, lambda: self.module.new_targets(pid))

    def _attach(self, pid: int, fields: dict[str, Any],
                find: Callable[[], list[NewTarget] | None]) -> bool:
        """Attach to what ``find`` gives and record each as an "attached" fact; whether it
        gave a list (None: nothing yet)."""
        try:
            targets = find()
        except (AttachError, OSError) as e:
            # Not one file's fault (those are refused one by one): the process's own.
            targets = [NewTarget(Target(f"the files of pid {pid}"), [], str(e))]
        if targets is None:
            return False
        for new in targets:
            why = new.refused or self.session.attach_late(new.probes)
            now = time.monotonic_ns()
            exec_ns = int(fields.get("ts_ns") or now)
            t = new.target
            self.session.facts.append(("attached", {
                "ts_ns": now, "pid": pid, "comm": str(fields.get("comm", "")),
                "path": t.seen_as or t.path, "mntns": t.mntns, "version": t.version,
                "build_id": t.build_id, "after_ms": (now - exec_ns) / 1e6,
                "probes": len(new.probes), "refused": why}))
        return True

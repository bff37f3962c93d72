"""Where items come from, and the loop that feeds them to the pipeline.

A source yields batches of raw items (Record, Lost, Fact): a recording being read
(:class:`RecordingSource`, here), or a live capture's drain thread (``LiveSource`` in
:mod:`ecapture.live.drain`). :func:`run` is the one loop that feeds either to the same
pipeline, so a replay prints exactly what the live run printed. :class:`CaptureStats`
counts what crossed from the kernel, for the status line and the summary. No I/O here
beyond the reader a source is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ecapture.pipeline import Pipeline
from ecapture.record import Fact, Item, Lost, Record

BATCH = 4096


class Source(Protocol):
    metadata: dict[str, Any]

    def batches(self) -> Iterator[Sequence[Item]]:
        """Batches of items until the source ends; a live source also yields empty batches
        when nothing arrived for a while, so that the loop can tick."""
        ...

    def now_ns(self) -> int | None:
        """Kernel (CLOCK_MONOTONIC) time now for a live source; None for a recording,
        whose time moves only with its events."""
        ...


@dataclass
class MapCounts:
    events: int = 0
    bytes: int = 0
    lost: int = 0


@dataclass
class CaptureStats:
    """Events, bytes and lost events per map; facts; the time span. Counted live by the
    drain thread, or while reading a recording."""

    names: dict[int, str] = field(default_factory=dict)  # map id -> "module/map"
    maps: dict[int, MapCounts] = field(default_factory=dict)
    facts: int = 0

    @classmethod
    def for_metadata(cls, metadata: Mapping[str, Any]) -> CaptureStats:
        stats = cls()
        for m in metadata.get("maps") or []:
            if isinstance(m, dict) and isinstance(m.get("id"), int):
                stats.names[m["id"]] = f"{m.get('module', '?')}/{m.get('name', '?')}"
                stats.maps[m["id"]] = MapCounts()
        return stats

    def count(self, item: Item) -> None:
        counts = self.maps.get(item.map_id)
        if counts is None:
            counts = self.maps[item.map_id] = MapCounts()
        if isinstance(item, Record):
            counts.events += 1
            counts.bytes += len(item.data)
        elif isinstance(item, Lost):
            counts.lost += item.count
        elif isinstance(item, Fact):
            self.facts += 1

    @property
    def events(self) -> int:
        return sum(c.events for c in self.maps.values())

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.maps.values())

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.maps.values())


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def summary_lines(stats: CaptureStats, duration_s: float | None,
                  extra: Sequence[str] = ()) -> list[str]:
    """The summary every model prints at exit (and replay with --stats)."""
    took = f" in {duration_s:.1f} s" if duration_s is not None else ""
    lines = [f"{stats.events:,} events ({human_bytes(stats.bytes)}){took}, "
             f"{stats.lost:,} lost"]
    for map_id in sorted(stats.maps):
        c = stats.maps[map_id]
        name = stats.names.get(map_id, f"map {map_id}")
        lines.append(f"  {name}: {c.events:,} events, {human_bytes(c.bytes)}, {c.lost:,} lost")
    if stats.facts:
        lines.append(f"  {stats.facts:,} facts from the running system (/proc)")
    lines += [f"  {line}" for line in extra]
    return lines


class RecordingSource:
    """A recording, read in batches; counts what it reads."""

    def __init__(self, reader: Any, stats: CaptureStats | None = None):
        self.reader = reader
        self.metadata: dict[str, Any] = reader.metadata
        self.stats = stats or CaptureStats.for_metadata(self.metadata)

    def batches(self) -> Iterator[Sequence[Item]]:
        batch: list[Item] = []
        count = self.stats.count
        for item in self.reader:
            count(item)
            batch.append(item)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def now_ns(self) -> int | None:
        return None


def run(source: Source, pipeline: Pipeline,
        after_batch: Callable[[], None] | None = None) -> None:
    """Feed every item of ``source`` to ``pipeline``; live, tick it after each batch."""
    feed = pipeline.feed
    for batch in source.batches():
        for item in batch:
            feed(item)
        now = source.now_ns()
        if now is not None:
            pipeline.tick(now)
        if after_batch is not None:
            after_batch()

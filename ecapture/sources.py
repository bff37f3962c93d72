"""Where items come from, and the loop that feeds them to the pipeline.

A source yields batches of raw items (Record, Lost, Fact). There is one kind,
:class:`RecordingSource`: a recording, finished or still being written (a live capture's
output is the replay of the recording it writes, through :mod:`ecapture.follow`). :func:`run`
is the one loop that feeds it to the pipeline, so a replay prints exactly what the live run
printed. :class:`CaptureStats` counts what crossed from the kernel, for the status line and
the summary. No I/O here beyond the reader a source is given.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ecapture.pipeline import Pipeline
from ecapture.record import Fact, Item, Lost, Record

_RECORD_ONLY = {Record}
_map_id = operator.attrgetter("map_id")
_data = operator.attrgetter("data")


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

    def count_all(self, items: Sequence[Item]) -> None:
        """count() each item; a batch of one map's records (the usual batch) is counted in
        one go rather than one item at a time."""
        if items and type(items[0]) is Record and \
                set(map(type, items)) == _RECORD_ONLY and len(set(map(_map_id, items))) == 1:
            counts = self.maps.get(items[0].map_id)
            if counts is None:
                counts = self.maps[items[0].map_id] = MapCounts()
            counts.events += len(items)
            counts.bytes += sum(map(len, map(_data, items)))
            return
        for item in items:
            self.count(item)

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
        """The reader's own batches: small (see Reader.batches), and none held back while
        the reader waits for more of a recording that is still being written."""
        count = self.stats.count_all
        for batch in self.reader.batches():
            count(batch)
            yield batch

    def now_ns(self) -> int | None:
        return None


def run(source: Source, pipeline: Pipeline,
        after_batch: Callable[[], None] | None = None) -> None:
    """Feed every item of ``source`` to ``pipeline``; live, tick it after each batch."""
    feed_all = pipeline.feed_all
    for batch in source.batches():
        feed_all(batch)
        now = source.now_ns()
        if now is not None:
            pipeline.tick(now)
        if after_batch is not None:
            after_batch()

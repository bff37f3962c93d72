"""What a recording holds: `ecapture info FILE`, and the words for one that was not closed
cleanly, which `ecapture replay` says too.

Layer rule: streams the file through Reader and counts; no decoding of payloads.
:func:`summarize` gathers facts, :func:`format_info` turns them into lines; metadata keys
may be missing (older or hand-made files), which prints as "?".
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ecapture.record import Lost, Record
from ecapture.record.reader import Reader, ReadStatus

# Only a clean close writes the END frame, so a file without one was left by a writer that
# never got there. Said in the user's words, not the format's: the same in info and replay.
UNCLEAN = "not closed cleanly"
UNCLEAN_WHY = "the capture was killed or crashed"


@dataclass
class MapInfo:
    id: int
    module: str
    name: str
    events: int = 0
    lost: int = 0


@dataclass
class Info:
    path: str
    format_version: int
    metadata: dict[str, Any]
    total_bytes: int
    status: ReadStatus
    maps: list[MapInfo] = field(default_factory=list)  # declared maps, then unknown ids seen
    first_ns: int | None = None  # CLOCK_MONOTONIC recv_ns of the first item
    last_ns: int | None = None

    @property
    def events(self) -> int:
        return sum(m.events for m in self.maps)

    @property
    def lost(self) -> int:
        return sum(m.lost for m in self.maps)

    def wall_ns(self, monotonic_ns: int | None) -> int | None:
        """A recv_ns as CLOCK_REALTIME nanoseconds, when the metadata has the clock offset."""
        offset = self.metadata.get("clock_offset_ns")
        if monotonic_ns is None or not isinstance(offset, int):
            return None
        return monotonic_ns + offset


def summarize(path: str | os.PathLike[str]) -> Info:
    """Read the whole recording once and count what is in it."""
    with Reader(path) as reader:
        maps: dict[int, MapInfo] = {}
        for m in reader.metadata.get("maps") or []:
            if isinstance(m, dict) and isinstance(m.get("id"), int):
                maps[m["id"]] = MapInfo(m["id"], str(m.get("module", "?")), str(m.get("name", "?")))
        first = last = None
        for item in reader:
            entry = maps.get(item.map_id)
            if entry is None:
                entry = maps[item.map_id] = MapInfo(item.map_id, "?", "?")
            if isinstance(item, Record):
                entry.events += 1
            elif isinstance(item, Lost):
                entry.lost += item.count
            if first is None:
                first = item.recv_ns
            last = item.recv_ns
        return Info(
            path=os.fspath(path),
            format_version=reader.format_version,
            metadata=reader.metadata,
            total_bytes=reader.bytes_read,
            status=reader.status,
            maps=list(maps.values()),
            first_ns=first,
            last_ns=last,
        )


def format_info(info: Info) -> str:
    """Human-readable lines, one fact per line."""
    meta = info.metadata
    lines = [
        ("file", f"{info.path} ({info.total_bytes} bytes)"),
        ("format version", str(info.format_version)),
        ("tool", f"{_get(meta, 'tool')} {_get(meta, 'tool_version')}"),
        ("host", _get(meta, "host")),
        ("kernel", _get(meta, "kernel")),
        ("machine", _get(meta, "machine")),
        ("command line", _command_line(meta.get("command_line"))),
        ("modules", _modules(meta.get("modules"))),
        ("start", _iso(_start_ns(info))),
        ("end", _end(info)),
        ("records span", _duration(info.first_ns, info.last_ns)),
        ("events", f"{info.events} ({info.lost} lost)"),
    ]
    lines += [
        (f"  map {m.id}", f"{m.module}/{m.name}: {m.events} events, {m.lost} lost")
        for m in info.maps
    ]
    lines.append(("ending", _ending(info.status)))
    if info.status.corrupt_frames:
        lines.append(("corrupt frames", f"{info.status.corrupt_frames} (skipped)"))
    if info.status.skipped_bytes:
        lines.append(("skipped bytes", str(info.status.skipped_bytes)))
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k + ':':<{width}}{v}" for k, v in lines)


def _get(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return "?" if value is None or value == "" else str(value)


def _command_line(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return shlex.join(value)
    return "?" if value is None else str(value)


def _modules(value: Any) -> str:
    if not isinstance(value, list) or not value:
        return "?"
    out = []
    for mod in value:
        if not isinstance(mod, dict):
            continue
        targets = [
            " ".join(
                [str(t.get("path", "?"))]
                + [f"{k}={t[k]}" for k in ("seen_as", "mntns", "processes", "version",
                                           "build_id")
                   if t.get(k) is not None and t.get(k) != t.get("path")]
            )
            for t in mod.get("targets") or []
            if isinstance(t, dict)
        ]
        name = str(mod.get("name", "?"))
        out.append(f"{name} ({', '.join(targets)})" if targets else name)
    return ", ".join(out) or "?"


def _iso(wall_ns: int | None) -> str:
    if wall_ns is None:
        return "?"
    # Whole seconds through the local zone, then the microseconds added exactly (no floats).
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).astimezone() + timedelta(microseconds=ns // 1000)
    return stamp.isoformat(timespec="microseconds")


def _start_ns(info: Info) -> int | None:
    """When capture started: the writer's creation time, else the first record's."""
    created = info.metadata.get("created_ns")
    return created if isinstance(created, int) else info.wall_ns(info.first_ns)


def _end(info: Info) -> str:
    """When capture ended: the END frame's clock, else only the last record is known."""
    summary = info.status.summary or {}
    end = summary.get("end_monotonic_ns")
    if isinstance(end, int):
        return _iso(info.wall_ns(end))
    return f"? ({UNCLEAN}; last record at {_iso(info.wall_ns(info.last_ns))})"


def _duration(first: int | None, last: int | None) -> str:
    if first is None or last is None:
        return "?"
    return f"{(last - first) / 1e9:.6f} s"


def _ending(st: ReadStatus) -> str:
    if st.clean_end:
        return "clean"
    said = [f"{_count(st.records, 'record')} read"]
    if st.truncated:
        said.append(f"{_cut(st)}, ignored")
    return f"{UNCLEAN}: {UNCLEAN_WHY} ({'; '.join(said)})"


def replay_notice(name: str, st: ReadStatus) -> str | None:
    """The one line that replay says, once every record is out, about a recording that a
    clean close did not leave (see ReadStatus.damaged); None for one that it did.

    Everything readable has been replayed by then, so the line says that, and how much
    was not readable: scripts get the exit status, people get the reason."""
    if not st.damaged:
        return None
    what = []
    if not st.clean_end:
        what.append(f"was {UNCLEAN} ({UNCLEAN_WHY})")
    if st.corrupt_frames:
        what.append("is damaged")
    said = [f"{_count(st.records, 'record')} read, all replayed"]
    if st.corrupt_frames:
        said.append(f"{_count(st.skipped_bytes, 'unreadable byte')} in "
                    f"{_count(st.corrupt_frames, 'place')} skipped")
    if st.truncated:
        said.append(_cut(st))
    return f"{name} {' and '.join(what)}: {'; '.join(said)}"


def _cut(st: ReadStatus) -> str:
    """The incomplete record at the end of a file whose writer stopped in mid-write."""
    last = "byte was" if st.truncated_bytes == 1 else f"{st.truncated_bytes:,} bytes were"
    return f"the last {last} an incomplete record"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"

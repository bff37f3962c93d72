"""Every replay filter applied to every golden recording, whatever module made it: the
filters see only the Event type, so they must select correctly for every module, and a
filter that matches nothing must show nothing (the bash recording once showed all its
lines for --pid 1 and --comm nosuch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ecapture import modules
from ecapture.events import Event
from ecapture.filters import EventFilter
from ecapture.pipeline import Pipeline, bind_from_metadata
from ecapture.record.reader import Reader
from ecapture.testing.replay import Collect

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = sorted(p for p in (ROOT / "fixtures" / "recordings").rglob("*.ecap")
                    if p.parent.name != "format")


def replay(path: Path, **filters: Any) -> list[Event]:
    sink = Collect()
    with Reader(str(path)) as reader:
        meta = reader.metadata
        accept = EventFilter(clock_offset_ns=int(meta.get("clock_offset_ns", 0)), **filters)
        pipeline = Pipeline(bind_from_metadata(meta), [sink],
                            accept=accept if accept.active else None)
        for item in reader:
            pipeline.feed(item)
        pipeline.close()
    return sink.events


def shown(events: list[Event]) -> list[Event]:
    """What the filters decide about (reports about the capture itself always pass)."""
    return [e for e in events if e.filtered]


def modules_of(path: Path) -> set[str]:
    with Reader(str(path)) as reader:
        return {m["name"] for m in reader.metadata.get("modules", [])}


def test_every_module_has_a_golden_recording() -> None:
    recorded = set().union(*(modules_of(p) for p in RECORDINGS))
    for module in modules.MODULES:
        assert module.name in recorded, f"no recording in fixtures/recordings uses {module.name}"


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_pid_and_comm_select_their_process(path: Path) -> None:
    everything = shown(replay(path))
    scoped = [e for e in everything if e.process_scoped]
    assert scoped, "a golden recording with no process's events"
    pid, comm = scoped[-1].pid, scoped[-1].comm
    by_pid = shown(replay(path, pid=pid))
    assert by_pid and all(e.pid == pid for e in by_pid if e.process_scoped)
    assert len([e for e in by_pid if e.process_scoped]) == \
        len([e for e in scoped if e.pid == pid])
    by_comm = shown(replay(path, comm=comm))
    assert by_comm and all(e.comm == comm for e in by_comm if e.process_scoped)
    # Filters that match no process show no process's events.
    for nothing in ({"pid": 1}, {"comm": "nosuch"}):
        assert [e for e in shown(replay(path, **nothing)) if e.process_scoped] == []


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_port_and_host_select_connections(path: Path) -> None:
    everything = shown(replay(path))
    conns = [e.connection for e in everything if e.network == "connection" and e.connection
             and e.connection.kind != "close"]
    if not conns:
        # Not network traffic (a shell): port and host filters select none of it.
        assert [e for e in shown(replay(path, port=443)) if e.network == "none"] == []
        assert [e for e in shown(replay(path, host="127.0.0.1")) if e.network == "none"] == []
        return
    port, host = conns[0].rport, conns[0].raddr
    for filters, keep in (({"port": port}, lambda c: port in (c.lport, c.rport)),
                          ({"host": host}, lambda c: host in (c.laddr, c.raddr))):
        selected = shown(replay(path, **filters))
        assert selected
        for e in selected:
            if e.network == "connection":
                c = e.connection
                assert c is not None and (c.kind == "close" or keep(c))
    assert [e for e in shown(replay(path, port=1)) if e.network == "connection"] == []


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_since_and_until_cut_at_wall_clock_time(path: Path) -> None:
    everything = shown(replay(path))
    with Reader(str(path)) as reader:
        offset = int(reader.metadata.get("clock_offset_ns", 0))
    stamps = sorted(e.timestamp_ns for e in everything)
    middle = stamps[len(stamps) // 2] + offset
    late = shown(replay(path, since_ns=middle))
    early = shown(replay(path, until_ns=middle - 1))
    assert late and all(e.timestamp_ns + offset >= middle for e in late)
    assert all(e.timestamp_ns + offset < middle for e in early)
    assert len(late) + len(early) == len(everything)

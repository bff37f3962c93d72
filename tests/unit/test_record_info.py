"""`ecapture info`: summarize() and format_info()."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecapture.record import Lost, Record
from ecapture.record.info import format_info, summarize
from ecapture.record.writer import Writer

ROOT = Path(__file__).resolve().parents[2]
V1_FIXTURE = ROOT / "fixtures" / "recordings" / "format" / "v1.ecap"


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def make(path: Path) -> None:
    meta = {
        "tool": "ecapture",
        "tool_version": "9.9",
        "clock_offset_ns": 10**18,
        "maps": [
            {"id": 0, "module": "openssl", "name": "data"},
            {"id": 1, "module": "bash", "name": "lines"},
        ],
    }
    with Writer(path, meta) as w:
        w.write(Record(0, 0, 1_000, b"a"))
        w.write(Record(0, 1, 2_000, b"b"))
        w.write(Lost(1, 0, 3_000, 4))
        w.write(Record(5, 0, 2_500_001_000, b"unknown map"))


def test_counts_and_clean(tmp_path: Path) -> None:
    path = tmp_path / "r.ecap"
    make(path)
    info = summarize(path)
    assert [(m.id, m.module, m.name, m.events, m.lost) for m in info.maps] == [
        (0, "openssl", "data", 2, 0),
        (1, "bash", "lines", 0, 4),
        (5, "?", "?", 1, 0),
    ]
    assert (info.events, info.lost) == (3, 4)
    assert (info.first_ns, info.last_ns) == (1_000, 2_500_001_000)
    assert info.total_bytes == path.stat().st_size
    assert info.status.clean_end
    text = format_info(info)
    assert "ending:" in text
    assert text.splitlines()[-1].endswith("clean")
    assert "2.500000 s" in text
    assert "host:           ?" in text
    assert "openssl/data: 2 events, 0 lost" in text


def test_truncated(tmp_path: Path) -> None:
    path = tmp_path / "r.ecap"
    make(path)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    info = summarize(path)
    assert info.status.truncated
    end_frame = 28 + len(b'{"events": {"0": 3}, "lost": {"1": 4}, "end_monotonic_ns": ')
    assert info.status.truncated_bytes > end_frame - 5
    assert info.events == 3
    assert info.status.records == 4  # three events and the lost count
    text = format_info(info)
    assert text.splitlines()[-1] == (
        "ending:         not closed cleanly: the capture was killed or crashed (4 records "
        f"read; the last {info.status.truncated_bytes} bytes were an incomplete record, ignored)")
    assert "end:            ? (not closed cleanly; last record at " in text


def test_no_end_marker(tmp_path: Path) -> None:
    path = tmp_path / "r.ecap"
    with Writer(path, {}) as w:
        w.write(Record(0, 0, 0, b""))
        w.abort()
    text = format_info(summarize(path))
    assert text.splitlines()[-1] == (
        "ending:         not closed cleanly: the capture was killed or crashed (1 record read)")
    assert "end:            ? (not closed cleanly; last record at ?)" in text
    assert "end marker" not in text  # the format's word, not the user's
    assert "start:          ?" in text  # no clock offset in the metadata


def test_fixture_info(utc: None) -> None:
    text = format_info(summarize(V1_FIXTURE))
    expected = [
        "format version: 1",
        "tool:           ecapture 0.1.0",
        "host:           fixture-host",
        "kernel:         6.1.0-fixture",
        "machine:        x86_64",
        "command line:   ecapture tls --record v1.ecap",
        "modules:        openssl (/usr/lib/libssl.so.3 version=3.0.2 build_id=ab12)",
        "start:          2023-11-14T22:13:21.000000+00:00",
        "end:            2023-11-14T22:13:21.004000+00:00",
        "records span:   0.003000 s",
        "events:         4 (7 lost)",
        "  map 0:        openssl/tls_events: 3 events, 7 lost",
        "  map 1:        openssl/connect_events: 1 events, 0 lost",
        "ending:         clean",
    ]
    assert text.splitlines()[1:] == expected

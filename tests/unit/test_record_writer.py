"""Writer behaviour beyond the format: errors, closing, counts, summaries."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ecapture.errors import EcaptureError, RecordWriteError
from ecapture.record import Lost, Record
from ecapture.record.reader import Reader
from ecapture.record.writer import Writer


def disk_that_fills_after(budget: int) -> Callable[[int, bytes | memoryview], int]:
    """An os.write that accepts ``budget`` more bytes, then fails like a full disk."""
    real = os.write
    left = [budget]

    def write(fd: int, data: bytes | memoryview) -> int:
        if left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    return write


def test_full_disk_surfaces_and_flushed_data_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "full.ecap"
    w = Writer(path, {"host": "h"})
    w.write(Record(0, 0, 1, b"first"))
    w.flush()
    monkeypatch.setattr(os, "write", disk_that_fills_after(10))
    w.write(Record(0, 0, 2, b"second, only partly written"))
    with pytest.raises(RecordWriteError) as err:
        w.flush()
    assert isinstance(err.value, EcaptureError)
    assert "No space left on device" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(RecordWriteError, match="earlier write error"):
        w.write(Record(0, 0, 3, b"third"))
    w.close()  # does not raise again, and does not write an END
    monkeypatch.undo()
    r = Reader(path)
    assert list(r) == [Record(0, 0, 1, b"first")]
    assert r.status.truncated
    assert r.status.truncated_bytes == 10
    assert not r.status.clean_end


def test_cannot_create(tmp_path: Path) -> None:
    with pytest.raises(RecordWriteError, match="cannot create recording"):
        Writer(tmp_path / "no" / "such" / "dir.ecap", {})


def test_unserializable_metadata_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Writer(tmp_path / "x.ecap", {"bad": object()})
    assert not (tmp_path / "x.ecap").exists()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    w = Writer(tmp_path / "x.ecap", {})
    w.close()
    w.close()
    with pytest.raises(RecordWriteError, match="already closed"):
        w.write(Record(0, 0, 0, b""))


def test_counts_and_summary(tmp_path: Path) -> None:
    path = tmp_path / "x.ecap"
    w = Writer(path, {}, clock=lambda: 99)
    for item in [Record(1, 0, 0, b"a"), Record(1, 0, 0, b"b"), Record(0, 0, 0, b"c")]:
        w.write(item)
    w.write(Lost(1, 0, 0, 5))
    w.write(Lost(1, 0, 0, 2))
    assert dict(w.events) == {1: 2, 0: 1}
    assert dict(w.lost) == {1: 7}
    w.close({"reason": "signal", "events": "not allowed to override"})
    r = Reader(path)
    list(r)
    assert r.status.summary == {
        "reason": "signal",
        "events": {"0": 1, "1": 2},
        "bytes": {"0": 1, "1": 2},
        "lost": {"1": 7},
        "facts": 0,
        "end_monotonic_ns": 99,
    }


def test_exception_in_with_block_leaves_no_end_marker(tmp_path: Path) -> None:
    path = tmp_path / "x.ecap"

    def interrupted() -> None:
        with Writer(path, {}) as w:
            w.write(Record(0, 0, 0, b"kept"))
            raise KeyError("boom")

    with pytest.raises(KeyError):
        interrupted()
    r = Reader(path)
    assert list(r) == [Record(0, 0, 0, b"kept")]
    assert not r.status.clean_end
    assert not r.status.truncated


def test_bad_items(tmp_path: Path) -> None:
    with Writer(tmp_path / "x.ecap", {}) as w:
        with pytest.raises(TypeError):
            w.write(b"raw bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="out of range"):
            w.write(Record(70000, 0, 0, b""))
        with pytest.raises(ValueError, match="out of range"):
            w.write(Lost(0, 0, 0, -1))


def test_unflushed_writes_are_buffered(tmp_path: Path) -> None:
    path = tmp_path / "x.ecap"
    w = Writer(path, {})
    size = path.stat().st_size
    w.write(Record(0, 0, 0, b"x" * 100))
    assert path.stat().st_size == size
    w.flush()
    assert path.stat().st_size == size + 128
    w.close()

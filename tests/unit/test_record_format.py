"""The .ecap format: round trips, cut files, corrupted files, bad headers, the v1 fixture."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecapture.errors import RecordFormatError
from ecapture.record import Fact, Lost, Record
from ecapture.record import reader as reader_mod
from ecapture.record.format import (
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    MAGIC,
    SYNC_BYTES,
    FrameKind,
    encode_frame,
    encode_header,
)
from ecapture.record.reader import Reader
from ecapture.record.writer import Writer

ROOT = Path(__file__).resolve().parents[2]
V1_FIXTURE = ROOT / "fixtures" / "recordings" / "format" / "v1.ecap"
V2_FIXTURE = ROOT / "fixtures" / "recordings" / "format" / "v2.ecap"
META = {"tool": "ecapture", "maps": [{"id": 0, "module": "m", "name": "events"}], "é": "ü"}

records = st.builds(
    Record,
    map_id=st.integers(0, 2**16 - 1),
    cpu=st.integers(0, 2**32 - 1),
    recv_ns=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=200),
)
losts = st.builds(
    Lost,
    map_id=st.integers(0, 2**16 - 1),
    cpu=st.integers(0, 2**32 - 1),
    recv_ns=st.integers(0, 2**64 - 1),
    count=st.integers(0, 2**64 - 1),
)
json_values = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(),
                        st.none())
facts = st.builds(
    Fact,
    map_id=st.integers(0, 2**16 - 1),
    recv_ns=st.integers(0, 2**64 - 1),
    what=st.text(min_size=1, max_size=10),
    fields=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "what"), json_values,
                           max_size=4),
)
item_lists = st.lists(st.one_of(records, losts, facts), max_size=25)
Item = Record | Lost | Fact


def _frame_payload(item: Item) -> int:
    if isinstance(item, Record):
        return len(item.data)
    if isinstance(item, Fact):
        return len(json.dumps({"what": item.what, **item.fields}, ensure_ascii=False).encode())
    return 8


def recording(items: Sequence[Item], metadata: dict[str, Any] = META) -> bytes:
    """The bytes the Writer produces for these items, with a clean END."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.ecap"
        with Writer(path, metadata, clock=lambda: 42) as w:
            for item in items:
                w.write(item)
        return path.read_bytes()


def frame_ends(items: Sequence[Item], metadata: dict[str, Any] = META) -> list[int]:
    """Offsets where the header and then each item's frame end (without the END frame)."""
    meta = json.dumps(metadata, ensure_ascii=False).encode()
    ends = [len(encode_header(meta))]
    for item in items:
        ends.append(ends[-1] + FRAME_OVERHEAD + _frame_payload(item))
    return ends


def read(data: bytes) -> tuple[list[Item], reader_mod.ReadStatus]:
    r = Reader(io.BytesIO(data))
    return list(r), r.status


@contextmanager
def chunk_size(n: int) -> Iterator[None]:
    with mock.patch.object(reader_mod, "CHUNK", n):
        yield


@settings(max_examples=60, deadline=None)
@given(item_lists)
def test_round_trip(items: list[Item]) -> None:
    r = Reader(io.BytesIO(recording(items)))
    assert r.metadata == META
    assert r.format_version == FORMAT_VERSION
    assert list(r) == items
    assert r.status == reader_mod.ReadStatus(
        clean_end=True,
        records=len(items),
        summary={
            "events": _counts(items, Record),
            "bytes": {k: v for k, v in _bytes(items).items()},
            "lost": _counts(items, Lost),
            "facts": sum(isinstance(i, Fact) for i in items),
            "end_monotonic_ns": 42,
        },
    )


def _bytes(items: Sequence[Item]) -> dict[str, int]:
    out: dict[int, int] = {}
    for i in items:
        if isinstance(i, Record):
            out[i.map_id] = out.get(i.map_id, 0) + len(i.data)
    return {str(k): v for k, v in sorted(out.items())}


def _counts(items: Sequence[Item], kind: type) -> dict[str, int]:
    out: dict[int, int] = {}
    for i in items:
        if isinstance(i, kind):
            out[i.map_id] = out.get(i.map_id, 0) + (i.count if isinstance(i, Lost) else 1)
    return {str(k): v for k, v in sorted(out.items())}


@settings(max_examples=20, deadline=None)
@given(item_lists, st.sampled_from([1, 3, 29, 1024]))
def test_tiny_read_chunks_give_the_same_result(items: list[Item], n: int) -> None:
    data = recording(items)
    with chunk_size(n):
        got, status = read(data)
    assert got == items
    assert status.clean_end


def check_cut(items: Sequence[Item], data: bytes, cut: int) -> None:
    ends = frame_ends(items)
    if cut < ends[0]:
        with pytest.raises(RecordFormatError, match="truncated header"):
            Reader(io.BytesIO(data[:cut]))
        return
    got, status = read(data[:cut])
    whole = sum(1 for e in ends[1:] if e <= cut)
    assert got == list(items[:whole])
    assert status.records == whole
    assert status.damaged == (cut != len(data))
    assert status.corrupt_frames == 0
    assert status.skipped_bytes == 0
    boundary = max(e for e in ends if e <= cut)
    if cut == len(data):
        assert status.clean_end
        assert not status.truncated
    elif cut == boundary:
        assert not status.clean_end
        assert not status.truncated
    else:
        assert not status.clean_end
        assert status.truncated
        assert status.truncated_bytes == cut - boundary


SMALL: list[Item] = [
    Record(0, 1, 10, b"hello"),
    Lost(0, 2, 11, 3),
    Record(1, 0, 12, b""),
    Record(2, 5, 13, SYNC_BYTES * 3 + b"payload with sync markers"),
    Record(0, 1, 14, b"last"),
]


def test_cut_at_every_byte() -> None:
    data = recording(SMALL)
    for cut in range(len(data) + 1):
        check_cut(SMALL, data, cut)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(records, losts), min_size=1, max_size=40), st.data())
def test_cut_at_random_offsets(items: list[Item], data: st.DataObject) -> None:
    raw = recording(items)
    check_cut(items, raw, data.draw(st.integers(0, len(raw)), label="cut"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(records, losts), min_size=1, max_size=20), st.data())
def test_damaged_frame_is_skipped(items: list[Item], data: st.DataObject) -> None:
    raw = bytearray(recording(items))
    ends = frame_ends(items)
    k = data.draw(st.integers(0, len(items) - 1), label="frame")
    at = data.draw(st.integers(ends[k], ends[k + 1] - 1), label="byte")
    raw[at] ^= data.draw(st.integers(1, 255), label="xor")
    got, status = read(bytes(raw))
    assert got == items[:k] + items[k + 1 :]
    assert status.corrupt_frames == 1
    assert status.skipped_bytes == ends[k + 1] - ends[k]
    assert status.clean_end
    assert not status.truncated


def test_flipped_payload_byte() -> None:
    raw = bytearray(recording(SMALL))
    ends = frame_ends(SMALL)
    raw[ends[0] + FRAME_OVERHEAD - 4 + 2] ^= 0x01  # inside "hello"
    got, status = read(bytes(raw))
    assert got == SMALL[1:]
    assert status.corrupt_frames == 1


@settings(max_examples=100, deadline=None)
@given(item_lists, st.data())
def test_junk_between_frames_resyncs(items: list[Item], data: st.DataObject) -> None:
    raw = recording(items)
    ends = frame_ends(items)
    at = data.draw(st.sampled_from(ends), label="where")
    junk = data.draw(st.binary(min_size=1, max_size=100), label="junk")
    junk = data.draw(st.sampled_from([junk, junk + SYNC_BYTES, SYNC_BYTES + junk]), label="sync")
    got, status = read(raw[:at] + junk + raw[at:])
    assert got == items
    assert status.corrupt_frames == 1
    assert status.skipped_bytes == len(junk)
    assert status.clean_end


def test_large_junk_and_payloads_stream_in_small_chunks() -> None:
    big = Record(0, 0, 1, bytes(range(256)) * 5000)  # ~1.2 MiB payload
    items: list[Item] = [Record(0, 0, 0, b"a"), big, Record(0, 0, 2, b"b")]
    raw = recording(items)
    ends = frame_ends(items)
    junk = b"\x17" + b"x" * 300_000 + b"\x17\x5a"
    damaged = raw[: ends[1]] + junk + raw[ends[1] :]
    with chunk_size(4096):
        got, status = read(damaged)
    assert got == items
    assert (status.corrupt_frames, status.skipped_bytes) == (1, len(junk))


def test_garbage_after_end_is_reported() -> None:
    raw = recording(SMALL) + b"trailing garbage"
    got, status = read(raw)
    assert got == SMALL
    assert status.clean_end
    assert status.skipped_bytes == len(b"trailing garbage")
    assert status.corrupt_frames == 0


def test_damage_then_cut() -> None:
    items = SMALL[:3]
    raw = bytearray(recording(items))
    ends = frame_ends(items)
    raw[ends[0] + 5] ^= 0xFF  # damage the first frame's kind
    cut = ends[2] + 10  # and cut inside the third
    got, status = read(bytes(raw[:cut]))
    assert got == [items[1]]
    assert status.corrupt_frames == 1
    assert status.skipped_bytes == ends[1] - ends[0]
    assert status.truncated
    assert status.truncated_bytes == 10


def test_checksummed_but_malformed_lost_frame_is_skipped() -> None:
    raw = recording([]).split(SYNC_BYTES)[0]  # just the header
    raw += encode_frame(FrameKind.LOST, 0, 0, 0, b"\x01\x02")  # LOST needs 8 bytes
    raw += encode_frame(FrameKind.EVENT, 0, 0, 1, b"ok")
    got, status = read(raw)
    assert got == [Record(0, 0, 1, b"ok")]
    assert status.corrupt_frames == 1


def test_end_exactly_at_boundary_without_end_marker() -> None:
    raw = recording(SMALL)
    got, status = read(raw[: frame_ends(SMALL)[-1]])
    assert got == SMALL
    assert not status.clean_end
    assert not status.truncated


# --- headers ---------------------------------------------------------------------------


def header(meta: bytes = b"{}", **kw: int) -> bytes:
    return encode_header(meta, **kw)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"hello world, this is plain text\n",
            r"^x\.ecap is not an ecapture recording \(bad magic\)$",
        ),
        (MAGIC.replace(b"\r\n", b"\n") + bytes(20), "bad magic"),  # newline-mangled copy
        (b"", "truncated header"),
        (MAGIC[:5], "truncated header"),
        (header()[:20], "truncated header"),
        (header()[:-1], "truncated header"),
        (header(version=FORMAT_VERSION + 1), "written by a newer ecapture"),
        (header(version=0), "too old"),
        (header(flags=4), "unknown header flags"),
        (header()[: len(MAGIC) + 4] + b"\xff\xff\xff\x7f", "implausible"),
        (header(b"[1, 2]"), "not a JSON object"),
        (header(b"{\xff}"), "not valid JSON"),
    ],
)
def test_bad_header(data: bytes, message: str) -> None:
    f = io.BytesIO(data)
    f.name = "x.ecap"
    with pytest.raises(RecordFormatError, match=message):
        Reader(f)


def test_bad_metadata_crc(tmp_path: Path) -> None:
    raw = bytearray(recording(SMALL))
    raw[20] ^= 0x20  # a byte of the metadata JSON
    path = tmp_path / "bad.ecap"
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordFormatError, match=r"bad\.ecap: metadata checksum mismatch"):
        Reader(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordFormatError, match="cannot open"):
        Reader(tmp_path / "nope.ecap")


def test_reader_iterates_once() -> None:
    r = Reader(io.BytesIO(recording(SMALL)))
    list(r)
    with pytest.raises(RuntimeError):
        iter(r)


def test_reader_reports_bytes_read(tmp_path: Path) -> None:
    path = tmp_path / "r.ecap"
    path.write_bytes(recording(SMALL))
    with Reader(path) as r:
        list(r)
    assert r.bytes_read == path.stat().st_size


# --- files -----------------------------------------------------------------------------


def test_file_mode_is_0600_even_if_it_existed(tmp_path: Path) -> None:
    path = tmp_path / "secret.ecap"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    with Writer(path, {}) as w:
        w.write(Record(0, 0, 0, b"password=hunter2"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(Reader(path)) == [Record(0, 0, 0, b"password=hunter2")]


def test_new_file_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Writer(tmp_path / "new.ecap", {}).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.ecap").stat().st_mode) == 0o600


# --- the frozen v1 sample --------------------------------------------------------------


def test_format_v1_fixture_readable() -> None:
    r = Reader(V1_FIXTURE)
    assert r.format_version == 1
    assert r.metadata["host"] == "fixture-host"
    assert r.metadata["clock_offset_ns"] == 1_700_000_000_000_000_000
    assert [m["name"] for m in r.metadata["maps"]] == ["tls_events", "connect_events"]
    assert list(r) == [
        Record(0, 0, 1_000_000_000, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
        Record(1, 3, 1_000_500_000, bytes(range(256))),
        Record(0, 1, 1_001_000_000, b""),
        Lost(0, 2, 1_002_000_000, 7),
        Record(0, 0, 1_003_000_000, b"\x17\x5a\xec\xa3 sync marker inside a payload"),
    ]
    assert r.status == reader_mod.ReadStatus(
        clean_end=True,
        records=5,
        summary={"events": {"0": 3, "1": 1}, "lost": {"0": 7}, "end_monotonic_ns": 1_004_000_000},
    )


def _fixture_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_format_fixture", Path(__file__).with_name("make_format_fixture.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_script_reproduces_the_committed_file() -> None:
    assert _fixture_script().build() == V1_FIXTURE.read_bytes()


def test_format_v2_fixture_readable() -> None:
    r = Reader(V2_FIXTURE)
    assert r.format_version == 2
    items = list(r)
    assert isinstance(items[0], Fact) and items[0].what == "socket"
    assert items[0].fields["pid"] == 42 and "what" not in items[0].fields
    assert items[1:] == [
        Record(0, 0xFFFFFFFF, 1_000_000_000, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
        Record(1, 3, 1_000_500_000, bytes(range(256))),
        Lost(0, 0xFFFFFFFF, 1_002_000_000, 7),
    ]
    assert r.status.clean_end and r.status.summary is not None
    assert r.status.summary["facts"] == 1


def _fixture_script_v2() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_format_fixture_v2", Path(__file__).with_name("make_format_fixture_v2.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_script_v2_reproduces_the_committed_file() -> None:
    assert _fixture_script_v2().build() == V2_FIXTURE.read_bytes()


def test_writer_writes_exactly_v2(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 2, "a new format version needs its own fixture and this test"
    script = _fixture_script_v2()
    path = tmp_path / "w.ecap"
    with Writer(path, script.METADATA, clock=lambda: 1_004_000_000) as w:
        for kind, map_id, cpu, recv_ns, payload in script.FRAMES:
            if kind == FrameKind.EVENT:
                w.write(Record(map_id, cpu, recv_ns, payload))
            elif kind == FrameKind.LOST:
                w.write(Lost(map_id, cpu, recv_ns, int.from_bytes(payload, "little")))
            elif kind == FrameKind.FACT:
                body = json.loads(payload)
                w.write(Fact(map_id, recv_ns, body.pop("what"), body))
        w.close({"capture": "stopped"})
    assert path.read_bytes() == V2_FIXTURE.read_bytes()


def test_fact_frames_in_a_v1_file_are_damage() -> None:
    """Version 1 had no FACT frames: in a v1 file such a frame is skipped as corrupt."""
    meta = json.dumps(META).encode()
    raw = (encode_header(meta, version=1)
           + encode_frame(FrameKind.FACT, 0, 0, 1, b'{"what": "socket"}')
           + encode_frame(FrameKind.EVENT, 0, 0, 2, b"x"))
    items, status = read(raw)
    assert items == [Record(0, 0, 2, b"x")]
    assert status.corrupt_frames == 1

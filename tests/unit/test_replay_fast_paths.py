"""The fast paths of replay give what the general paths give: reader batches, whole TLS
calls decoded straight to events, conversations already shown raw, batched pipeline and
outputs, cached times and texts, and json lines built without the generic encoder."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecapture.assemble import TlsChunk
from ecapture.events import Conn, ConnKind, Event, TlsData
from ecapture.modules.openssl import OpenSSLModule
from ecapture.outputs.jsonl import JsonOutput
from ecapture.outputs.text import TextOutput
from ecapture.pipeline import Pipeline, bind_from_metadata, reorder_window
from ecapture.record import Lost, Record
from ecapture.record import reader as reader_mod
from ecapture.record.format import FrameKind, encode_frame, encode_header
from ecapture.record.reader import BATCH_MAX, Reader
from ecapture.render import _UNPRINTABLE, MEMO_MAX, Style, printable, wall_time
from ecapture.sources import CaptureStats, RecordingSource, run
from ecapture.streams import IDLE_SCAN_NS, Conversations
from ecapture.structs.tls import EVENT_CONN, EVENT_SSL_DATA, conn_event_t
from ecapture.structs.tls import ssl_data_event_t as data_t
from ecapture.testing.factories import make_event

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = sorted(p for p in (ROOT / "fixtures" / "recordings").rglob("*.ecap")
                    if p.parent.name != "format")
ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
         dt.timezone(dt.timedelta(hours=-8))]


# -- times and payload text -------------------------------------------------------------

@settings(max_examples=200)
@given(offset=st.integers(-(2**40), 2**61), tz=st.sampled_from(ZONES),
       steps=st.lists(st.integers(-3 * 10**9, 3 * 10**9), min_size=1, max_size=30),
       start=st.integers(0, 2**60))
def test_style_times_match_wall_time(offset: int, tz: dt.tzinfo, steps: list[int],
                                     start: int) -> None:
    # One Style over times in and out of order, within a second and across seconds: the
    # kept second, the per-second cache and the first call all agree with wall_time().
    style = Style(offset, tz=tz)
    for ts in itertools.accumulate(steps, initial=start):
        want = wall_time(ts, offset, tz)
        assert style.when(ts) == want
        assert style.iso(ts) == want.replace(" ", "T", 1)


@pytest.mark.parametrize("wall_ns", [0, 999_999_999, 1_000_000_000, 1_000_000_001,
                                     -1, -1_000_000_000, -1_500_000_000])
def test_style_times_near_the_epoch(wall_ns: int) -> None:
    # The kept second is only used from 1 s after the epoch (str(us)[-6:] needs 7 digits).
    style = Style(0, tz=dt.UTC)
    for ts in (wall_ns, wall_ns + 1000, wall_ns):
        assert style.when(ts) == wall_time(ts, 0, dt.UTC)


@given(st.one_of(st.binary(max_size=300),
                 st.text(max_size=200).map(lambda t: t.encode("utf-8")),
                 st.text(alphabet="ab \t\n\r\x7f\x1b", max_size=50).map(str.encode)))
def test_printable_plain_ascii_shortcut(data: bytes) -> None:
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    assert printable(data) == _UNPRINTABLE.sub(".", text)


# -- events rendering themselves ----------------------------------------------------------

ADDRS = ["127.0.0.1", "10.0.0.2", "::1", "fe80::1", "?"]
conns = st.builds(
    Conn, timestamp_ns=st.integers(0, 2**62), pid=st.integers(0, 2**31),
    tid=st.integers(0, 2**31), uid=st.integers(0, 2**32 - 1), comm=st.text(max_size=16),
    kind=st.sampled_from(["connect", "accept", "close", "proc"]), fd=st.integers(-1, 1000),
    sock=st.integers(0, 2**64 - 1), family=st.sampled_from([0, 2, 10]),
    laddr=st.sampled_from(ADDRS), lport=st.integers(0, 65535), raddr=st.sampled_from(ADDRS),
    rport=st.integers(0, 65535))
payloads = st.one_of(st.binary(max_size=200),
                     st.text(max_size=100).map(lambda t: t.encode("utf-8")),
                     st.sampled_from([b"x" * 63 + b"\n", b'{"a": "\\u00e9"}\r\n', b"\xff\xfe"]))


@st.composite
def data_events(draw: st.DrawFn, conn: Conn | None = None) -> TlsData:
    payload = draw(payloads)
    return TlsData(
        draw(st.integers(0, 2**62)), draw(st.integers(0, 2**31)), draw(st.integers(0, 2**31)),
        draw(st.integers(0, 2**32 - 1)), draw(st.text(max_size=16)), draw(st.integers(-1, 99)),
        draw(st.sampled_from([0, 0x0303, 0x0304, 0x1234])),
        draw(st.sampled_from(["read", "write"])), draw(st.text(max_size=20)),
        draw(st.integers(0, 2**64 - 1)), payload, len(payload) + draw(st.integers(0, 5)),
        conn if conn is not None else draw(st.none() | conns))


def generic_json_line(event: Event, style: Style) -> str | None:
    """What the json model wrote before json_line(): the stdlib encoder over json()."""
    obj = event.json(style)
    return None if obj is None else json.dumps(obj, ensure_ascii=False)


@settings(max_examples=300)
@given(events=st.lists(data_events(), min_size=1, max_size=8),
       offset=st.integers(0, 2**61), tz=st.sampled_from(ZONES))
def test_data_json_line_is_the_generic_encoding(events: list[TlsData], offset: int,
                                                tz: dt.tzinfo) -> None:
    style = Style(offset, tz=tz)
    for event in events * 2:  # the second time from the memo
        assert event.json_line(style) == generic_json_line(event, Style(offset, tz=tz))


@settings(max_examples=200)
@given(events=st.lists(data_events(), min_size=1, max_size=8), hex=st.booleans())
def test_data_text_from_the_memo_is_the_fresh_text(events: list[TlsData], hex: bool) -> None:
    style = Style(12345, hex=hex, tz=dt.UTC)
    for event in events * 2:
        assert event.text(style) == event.text(Style(12345, hex=hex, tz=dt.UTC))


def test_memo_tells_connections_apart_and_stays_bounded() -> None:
    style = Style(0, tz=dt.UTC)
    one = Conn(1, 10, 10, 0, "curl", "connect", 5, 1, 2, "127.0.0.1", 1000, "10.0.0.1", 443)
    other = Conn(1, 10, 10, 0, "curl", "connect", 5, 2, 2, "127.0.0.1", 2000, "10.0.0.2", 443)
    for conn in (one, other, one):
        event = TlsData(5, 10, 10, 0, "curl", 5, 0x0304, "write", "SSL_write", 1, b"hi", 2, conn)
        assert conn.remote in event.text(style)
        assert f'"remote": "{conn.remote}"' in event.json_line(style)
    for pid in range(MEMO_MAX + 10):
        TlsData(5, pid, pid, 0, "curl", 5, 0x0304, "write", "SSL_write", 1, b"hi", 2).text(style)
    assert len(style.memo) <= MEMO_MAX


# -- conversations -------------------------------------------------------------------------

HTTP_REQ = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
HTTP_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@st.composite
def conversation_events(draw: st.DrawFn) -> list[Event]:
    """Connections and data on a few fds, SSL objects and sockets, some HTTP, some not."""
    out: list[Event] = []
    ts = 0
    conns: dict[int, Conn | None] = {}
    for _ in range(draw(st.integers(1, 40))):
        ts += draw(st.sampled_from([1, 1000, IDLE_SCAN_NS // 2, IDLE_SCAN_NS * 3]))
        fd = draw(st.sampled_from([-1, 3, 4]))
        if draw(st.integers(0, 4)) == 0 and fd >= 0:
            kind: ConnKind = draw(st.sampled_from(["connect", "accept", "close"]))
            new = Conn(ts, 7, 7, 0, "app", kind, fd, draw(st.sampled_from([1, 2, 3])), 2,
                       "127.0.0.1", 1000 + fd, "127.0.0.1", 443)
            conns[fd] = None if kind == "close" else new
            out.append(new)
            continue
        payload = draw(st.sampled_from([HTTP_REQ, HTTP_RESP, b"x" * 10, b"\x00\x01", b""]))
        # Mostly the fd's connection; sometimes one the conversations never saw on this fd
        # (the module knows connections by its own table; a filter may drop Conn events).
        conn = conns.get(fd) if draw(st.integers(0, 3)) else draw(st.sampled_from(
            [None, *(Conn(0, 7, 7, 0, "app", "connect", 3, sock, 2, "127.0.0.1", 1, "::1", 2)
                     for sock in (1, 2))]))
        out.append(TlsData(ts, 7, 7, 0, "app", fd, 0x0304,
                           draw(st.sampled_from(["read", "write"])), "SSL_read",
                           draw(st.sampled_from([0xA, 0xB])), payload, len(payload), conn))
    return out


@settings(max_examples=300)
@given(events=conversation_events(), cuts=st.lists(st.integers(1, 10), max_size=20))
def test_conversations_feed_all_is_feed_one_by_one(events: list[Event],
                                                   cuts: list[int]) -> None:
    one, many = Conversations(), Conversations()
    want: list[Event] = []
    for event in events:
        want += one.feed(event)
    want += one.finish()
    got: list[Event] = []
    at = 0
    for n in itertools.chain(cuts, itertools.repeat(10)):
        if at >= len(events):
            break
        got += many.feed_all(events[at:at + n])
        at += n
    got += many.finish()
    assert got == want


# -- whole calls decoded straight to events ---------------------------------------------------

class ChunksOnly(OpenSSLModule):
    """Every data record as a TlsChunk, through the chunk joiner: the general path."""

    def decode(self, map_name: str, data: bytes) -> Any:
        got = super().decode(map_name, data)
        if not isinstance(got, TlsData):
            return got
        start_ns = self._data_unpack(data)[3]
        return TlsChunk(got.timestamp_ns, got.pid, got.tid, got.uid, got.comm, got.fd,
                        got.version, got.direction, got.func, got.conn_id, got.total_len,
                        start_ns, 0, got.data)


def raw_chunk(tid: int, start_ns: int, ts: int, payload: bytes, offset: int, total: int,
              fd: int) -> bytes:
    return make_event(data_t, kind=EVENT_SSL_DATA, pid=100, timestamp_ns=ts, start_ns=start_ns,
                      ssl=0xABC + tid, tid=tid, uid=0, fd=fd, version=0x0304,
                      total_len=total, offset=offset, direction=1, func=3, comm=b"app",
                      data=payload)


@st.composite
def chunk_records(draw: st.DrawFn) -> list[bytes]:
    """Calls of a few threads, each in one or more chunks, some cut short, interleaved, with
    connections opening and closing on their fds."""
    out: list[bytes] = []
    ts = 1000
    for call in range(draw(st.integers(1, 25))):
        ts += 10
        tid = draw(st.sampled_from([101, 102]))
        fd = draw(st.sampled_from([-1, 5, 6]))
        if draw(st.integers(0, 5)) == 0 and fd >= 0:
            out.append(make_event(conn_event_t, kind=EVENT_CONN, pid=100, timestamp_ns=ts,
                                  sock=draw(st.sampled_from([1, 2])), tid=tid, uid=0, fd=fd,
                                  family=2, conn=draw(st.sampled_from([0, 1, 2])),
                                  lport=40000, rport=443, laddr=bytes([127, 0, 0, 1]),
                                  raddr=bytes([127, 0, 0, 2]), comm=b"app"))
        payload = draw(st.binary(max_size=12))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=2)))
        bounds = [0, *cuts, len(payload)]
        pieces = [(a, payload[a:b]) for a, b in itertools.pairwise(bounds) if b > a] or \
            [(0, b"")]
        keep = draw(st.integers(1, len(pieces)))  # the rest lost
        for offset, piece in pieces[:keep]:
            ts += 1
            out.append(raw_chunk(tid, 10**6 + call, ts, piece, offset, len(payload), fd))
    return out


@settings(max_examples=300)
@given(chunk_records())
def test_whole_calls_give_what_the_joiner_gives(records: list[bytes]) -> None:
    def run_module(module: OpenSSLModule) -> list[Event]:
        out: list[Event] = []
        for raw in records:
            out += module.dispatch(module.decode("events", raw))
        out += module.finish()
        return out

    assert run_module(OpenSSLModule({})) == run_module(ChunksOnly({}))


# -- pipeline, source and outputs in batches ----------------------------------------------------

def replay(path: Path, batched: bool, model: str, raw: bool) -> str:
    out = io.StringIO()
    with Reader(str(path)) as reader:
        meta = reader.metadata
        output: Any = (JsonOutput(out, 0, tz=dt.UTC) if model == "json"
                       else TextOutput(out, 0, tz=dt.UTC))
        if not batched:
            # write() one event at a time rather than the output's write_all()
            output = type("OneByOne", (), {"write": output.write, "close": output.close})()
        pipeline = Pipeline(bind_from_metadata(meta), [output],
                            conversations=None if raw else Conversations(reorder_window(meta)))
        if batched:
            run(RecordingSource(reader), pipeline)
        else:
            for item in reader:
                pipeline.feed(item)
        pipeline.close()
    return out.getvalue()


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
@pytest.mark.parametrize(("model", "raw"), [("json", False), ("text", False), ("text", True)])
def test_batches_replay_like_single_items(path: Path, model: str, raw: bool) -> None:
    assert replay(path, True, model, raw) == replay(path, False, model, raw)


def test_count_all_counts_like_count() -> None:
    batches: list[list[Any]] = [
        [Record(0, 0, 1, b"abc"), Record(0, 1, 2, b"de")],  # one map's records: in one go
        [Record(0, 0, 1, b"abc"), Record(1, 0, 2, b"xyz!")],
        [Record(2, 0, 1, b"q"), Lost(2, 0, 2, 7)],
        [],
    ]
    one, many = CaptureStats(), CaptureStats()
    for batch in batches:
        for item in batch:
            one.count(item)
        many.count_all(batch)
    assert one == many


# -- reader batches ---------------------------------------------------------------------------

class Trickle(io.RawIOBase):
    """A file that hands out its bytes a few at a time and notes, at every read, how far
    it had got and how many items the reader had handed on by then."""

    def __init__(self, data: bytes, step: int, delivered: list[Any]):
        self.data, self.step, self.pos = data, step, 0
        self.delivered = delivered
        self.log: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.log.append((self.pos, len(self.delivered)))
        piece = self.data[self.pos:self.pos + min(self.step, n if n > 0 else self.step)]
        self.pos += len(piece)
        return piece


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=700),
       step=st.sampled_from([7, 100, 4096, 1 << 20]), lost_at=st.integers(0, 700))
def test_reader_batches_are_small_and_never_wait_holding_items(sizes: list[int], step: int,
                                                               lost_at: int) -> None:
    items: list[Any] = [Record(0, 1, i, bytes([i % 256]) * n) for i, n in enumerate(sizes)]
    items.insert(min(lost_at, len(items)), Lost(0, 1, 5, 3))
    header = encode_header(json.dumps({"maps": []}).encode())
    frames = [encode_frame(FrameKind.EVENT, r.map_id, r.cpu, r.recv_ns, r.data)
              if isinstance(r, Record) else
              encode_frame(FrameKind.LOST, r.map_id, r.cpu, r.recv_ns,
                           r.count.to_bytes(8, "little"))
              for r in items]
    ends = list(itertools.accumulate((len(f) for f in frames), initial=len(header)))[1:]
    delivered: list[Any] = []
    stream = Trickle(header + b"".join(frames), step, delivered)
    reader = Reader(stream)  # type: ignore[arg-type]
    reads_before = len(stream.log)
    for batch in reader.batches():
        assert 0 < len(batch) <= BATCH_MAX
        delivered += batch
    assert delivered == items
    for pos, handed_on in stream.log[reads_before:]:
        # Every frame that had fully arrived was handed on before the reader read again.
        assert handed_on == sum(1 for end in ends if end <= pos)


def test_reader_iteration_is_its_batches_flattened() -> None:
    path = RECORDINGS[0]
    with Reader(path) as a, Reader(path) as b:
        assert list(a) == [item for batch in b.batches() for item in batch]
        assert a.status == b.status and a.bytes_read == b.bytes_read
    with Reader(path) as c:
        c.batches()
        with pytest.raises(RuntimeError):
            iter(c)


def test_reader_hot_path_still_checks_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [Record(0, 0, i, b"payload %d" % i) for i in range(10)]
    header = encode_header(json.dumps({"maps": []}).encode())
    frames = [bytearray(encode_frame(FrameKind.EVENT, 0, 0, r.recv_ns, r.data)) for r in records]
    frames[4][-10] ^= 0xFF  # a payload byte: the CRC no longer matches
    monkeypatch.setattr(reader_mod, "CHUNK", 1 << 20)  # the whole file in the window
    reader = Reader(io.BytesIO(header + b"".join(frames)))
    assert list(reader) == records[:4] + records[5:]
    assert reader.status.corrupt_frames == 1

"""HTTP/2 parser: real conversations produced by an h2 client and an h2 server talking to each
other in memory, fed whole, byte by byte and split anywhere; plus corrupt input and fuzzing."""

from __future__ import annotations

import gzip
import random
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from functools import cache
from typing import TypeVar

import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived
from h2.settings import SettingCodes
from hypothesis import given
from hypothesis import strategies as st

from ecapture.parsers.http2 import PREFACE, Http2Parser
from ecapture.parsers.messages import (
    Http2Frame,
    HttpRequest,
    HttpResponse,
    Message,
    ProtocolError,
    RawData,
    Side,
)
from ecapture.testing.feeding import (
    Script,
    cuts_for,
    feed_all,
    feed_every_way,
    normalise,
    split_script,
)

Headers = Sequence[tuple[str, str]]
M = TypeVar("M", bound=Message)


class Conversation:
    """An h2 client and an h2 server wired together in memory. Every write either makes is
    delivered to the other and recorded as one script chunk (ts = chunk index)."""

    def __init__(self, client_settings: dict[SettingCodes | int, int] | None = None) -> None:
        self.client = H2Connection(H2Configuration(client_side=True))
        self.server = H2Connection(H2Configuration(client_side=False))
        self.script: list[tuple[Side, bytes]] = []
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.server.initiate_connection()
        self.pump()

    def conn(self, side: Side) -> H2Connection:
        return self.client if side == "client" else self.server

    def pump(self) -> None:
        """Deliver until both are quiet; receivers hand flow-control credit back at once."""
        pairs: tuple[tuple[Side, H2Connection, H2Connection], ...] = (
            ("client", self.client, self.server), ("server", self.server, self.client))
        busy = True
        while busy:
            busy = False
            for side, src, dst in pairs:
                data = src.data_to_send()
                if data:
                    busy = True
                    self.script.append((side, data))
                    for event in dst.receive_data(data):
                        if isinstance(event, DataReceived) and event.flow_controlled_length:
                            dst.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)

    def inject(self, side: Side, data: bytes) -> None:
        """Bytes that appear on the wire but that the peer never gets to see."""
        self.pump()
        self.script.append((side, data))

    def request(self, path: str, extra: Headers = (), body: bytes = b"", end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [(":method", "POST" if body else "GET"), (":scheme", "https"),
                   (":authority", "example.test"), (":path", path), *extra]
        self.client.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.send_body("client", sid, body, end=end)
        self.pump()
        return sid

    def respond(self, sid: int, status: int = 200, extra: Headers = (), body: bytes = b"",
                end: bool = True) -> None:
        self.server.send_headers(sid, [(":status", str(status)), *extra],
                                 end_stream=end and not body)
        if body:
            self.send_body("server", sid, body, end=end)
        self.pump()

    def send_body(self, side: Side, sid: int, body: bytes, end: bool = True,
                  piece: int | None = None, pad: int | None = None) -> None:
        """Send as the flow-control window allows, pumping whenever it runs dry."""
        conn = self.conn(side)
        while True:
            n = min(len(body), piece or len(body), conn.max_outbound_frame_size - (pad or 0) - 1,
                    conn.local_flow_control_window(sid))
            last = n == len(body)
            if n or last:
                conn.send_data(sid, body[:n], end_stream=end and last, pad_length=pad)
                body = body[n:]
            if last:
                return
            self.pump()


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def frame_types(data: bytes) -> list[int]:
    types, pos = [], len(PREFACE) if data.startswith(PREFACE) else 0
    while pos + 9 <= len(data):
        types.append(data[pos + 3])
        pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    return types


def side_bytes(script: Script, side: Side) -> bytes:
    return b"".join(data for s, data in script if s == side)


def of_type(messages: Sequence[Message], cls: type[M]) -> list[M]:
    return [m for m in messages if isinstance(m, cls)]


def parse(script: Script) -> list[Message]:
    """Messages of the script fed whole, after checking that byte-by-byte feeding agrees (the
    comparison blanks error reasons and merges RawData; the result keeps them as they came)."""
    parser = Http2Parser()
    whole = [m for ts, (side, data) in enumerate(script) for m in parser.feed(side, data, ts)]
    whole += parser.close()
    assert feed_every_way(Http2Parser, script) == normalise(whole)
    return whole


# -- scenarios (each a complete script, also used by the split property below) ----------------

@cache
def get_200() -> Script:
    conv = Conversation()
    sid = conv.request("/index.html", [("user-agent", "curl/8")])
    conv.respond(sid, extra=[("content-type", "text/html")], body=b"<h1>hi</h1>")
    return conv.script


@cache
def many_requests() -> Script:
    conv = Conversation()
    common = [("user-agent", "test/1.0"), ("cookie", "session=abcdef0123456789"),
              ("accept", "application/json")]
    sids = [conv.request(f"/item/{i}", common + [("x-n", str(i))]) for i in range(23)]
    for i, sid in reversed(list(enumerate(sids))):  # answered last first
        conv.respond(sid, extra=[("server", "h2test"), ("cache-control", "no-store")],
                     body=f"item {i}".encode())
    assert conv.client.encoder.header_table.dynamic_entries  # HPACK indexing in use
    return conv.script


@cache
def interleaved() -> Script:
    conv = Conversation()
    sids = [conv.request(f"/s{i}") for i in range(3)]
    for sid in sids:
        conv.respond(sid, body=b"", end=False)
    for round_ in range(4):
        for sid in sids:
            conv.server.send_data(sid, f"[{sid}:{round_}]".encode(),
                                  end_stream=round_ == 3 and sid != sids[1])
            conv.pump()
    conv.server.send_data(sids[1], b"tail", end_stream=True)
    conv.pump()
    return conv.script


@cache
def big_headers() -> Script:
    conv = Conversation()
    rng = random.Random(7)
    big = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(40_000))
    sid = conv.request("/big", [("x-big", big)], body=b"payload")
    conv.respond(sid, extra=[("x-big-reply", big[::-1])], body=b"ok")
    assert 0x9 in frame_types(side_bytes(conv.script, "client"))  # CONTINUATION on the wire
    assert 0x9 in frame_types(side_bytes(conv.script, "server"))
    return conv.script


ENCODED = (("/gz", "gzip", gzip.compress(b"gzipped " * 100)),
           ("/df", "deflate", zlib.compress(b"deflated " * 100)),
           ("/raw", "deflate", zlib.compress(b"raw deflate")[2:-4]),  # raw deflate, no wrapper
           ("/br", "br", b"not really brotli"))  # unknown codings stay as sent


@cache
def encoded_bodies() -> Script:
    conv = Conversation()
    for path, coding, packed in ENCODED:
        sid = conv.request(path)
        conv.respond(sid, extra=[("content-encoding", coding)], body=packed)
    return conv.script


@cache
def trailers_informational_padding() -> Script:
    conv = Conversation()
    sid = conv.request("/rpc", [("te", "trailers")], body=b"req", end=False)
    conv.client.send_headers(sid, [("x-req-trailer", "1")], end_stream=True)
    conv.pump()
    conv.server.send_headers(sid, [(":status", "103"), ("link", "</a.css>; rel=preload")])
    conv.pump()
    conv.respond(sid, extra=[("content-type", "application/grpc")], end=False)
    conv.send_body("server", sid, b"padded body", end=False, pad=17)
    conv.server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    conv.pump()
    return conv.script


@cache
def control_frames() -> Script:
    # The client shrinks the server's HPACK table to 0 and then grows it to 8192: each takes
    # effect for the server's encoder only once it ACKs (RFC 9113 §6.5.3).
    conv = Conversation({SettingCodes.HEADER_TABLE_SIZE: 0})
    sid = conv.request("/a")
    conv.respond(sid, extra=[("x-a", "1")], body=b"a")
    conv.client.update_settings({SettingCodes.HEADER_TABLE_SIZE: 8192})
    conv.pump()
    for path in ("/b", "/c"):
        sid = conv.request(path)
        conv.respond(sid, extra=[("x-repeat", "same value each time")], body=path.encode())
    conv.server.ping(b"pingpong")
    conv.inject("server", frame(0xFA, 0x01, 0, b"xyz"))  # an extension frame type
    conv.server.close_connection(error_code=ErrorCodes.NO_ERROR, last_stream_id=sid)
    conv.pump()
    return conv.script


@cache
def reset_and_push() -> Script:
    conv = Conversation()
    sid = conv.request("/stream")
    conv.respond(sid, body=b"partial", end=False)
    conv.client.reset_stream(sid, ErrorCodes.CANCEL)
    conv.pump()
    sid = conv.request("/page")
    conv.server.push_stream(sid, 2, [(":method", "GET"), (":scheme", "https"),
                                     (":authority", "example.test"), (":path", "/style.css")])
    conv.pump()
    conv.respond(2, body=b"body{}")
    conv.respond(sid, body=b"<html>")
    sid = conv.request("/open")
    conv.respond(sid, body=b"half", end=False)  # never finished: close() reports it
    return conv.script


SCENARIOS: dict[str, Callable[[], Script]] = {f.__name__: f for f in (
    get_200, many_requests, interleaved, big_headers, encoded_bodies,
    trailers_informational_padding, control_frames, reset_and_push)}


# -- conversations ----------------------------------------------------------------------------

def test_get_200_with_body() -> None:
    out = parse(get_200())
    (req,), (resp,) = of_type(out, HttpRequest), of_type(out, HttpResponse)
    assert (req.method, req.authority, req.path, req.stream_id) == \
        ("GET", "example.test", "/index.html", 1)
    assert req.headers[:4] == ((":method", "GET"), (":scheme", "https"),
                               (":authority", "example.test"), (":path", "/index.html"))
    assert ("user-agent", "curl/8") in req.headers and req.http_version == "2"
    assert (resp.status, resp.reason, resp.body, resp.body_size) == (200, "", b"<h1>hi</h1>", 11)
    assert resp.stream_id == 1 and resp.complete and not resp.informational
    # chunks: client SETTINGS, server SETTINGS+ACK, client ACK, request, response
    assert (req.start_ns, req.end_ns, resp.start_ns, resp.end_ns) == (3, 3, 4, 4)
    assert [f.type for f in of_type(out, Http2Frame)].count("SETTINGS") == 4


def test_timestamps_follow_the_bytes() -> None:
    script = list(get_200())
    side, request = script[3]
    # The request HEADERS frame arrives in two feeds with their own ts: it starts at 3.
    script[3:4] = [(side, request[:5]), (side, request[5:])]
    (req,) = of_type(parse(script), HttpRequest)
    assert (req.start_ns, req.end_ns) == (3, 4)


def test_23_requests_on_one_connection_pair_by_stream_id() -> None:
    out = parse(many_requests())
    reqs, resps = of_type(out, HttpRequest), of_type(out, HttpResponse)
    assert len(reqs) == 23 and len(resps) == 23
    paths = {r.stream_id: r.path for r in reqs}
    assert sorted(paths.values()) == sorted(f"/item/{i}" for i in range(23))
    for req in reqs:
        assert ("x-n", req.path.rsplit("/", 1)[1]) in req.headers
        assert ("cookie", "session=abcdef0123456789") in req.headers
    for resp in resps:
        assert resp.body == f"item {paths[resp.stream_id].rsplit('/', 1)[1]}".encode()
        assert ("cache-control", "no-store") in resp.headers
    assert [r.stream_id for r in reqs] == list(range(1, 47, 2))
    assert [r.stream_id for r in resps] == list(range(45, 0, -2))  # answered last first


def test_interleaved_streams() -> None:
    resps = of_type(parse(interleaved()), HttpResponse)
    assert {r.stream_id: r.body for r in resps} == {
        sid: b"".join(f"[{sid}:{n}]".encode() for n in range(4)) + (b"tail" if sid == 3 else b"")
        for sid in (1, 3, 5)}
    assert [r.stream_id for r in resps] == [1, 5, 3]  # completion order


def test_continuation_frames() -> None:
    out = parse(big_headers())
    (req,), (resp,) = of_type(out, HttpRequest), of_type(out, HttpResponse)
    big = dict(req.headers)["x-big"]
    assert len(big) == 40_000 and dict(resp.headers)["x-big-reply"] == big[::-1]
    assert (req.method, req.body, resp.body) == ("POST", b"payload", b"ok")


def test_content_encoding_decoded() -> None:
    resps = of_type(parse(encoded_bodies()), HttpResponse)
    assert [r.body for r in resps] == [b"gzipped " * 100, b"deflated " * 100, b"raw deflate",
                                       b"not really brotli"]
    assert [r.body_size for r in resps] == [len(packed) for _, _, packed in ENCODED]


def test_trailers_informational_and_padding() -> None:
    out = parse(trailers_informational_padding())
    (req,) = of_type(out, HttpRequest)
    info, final = of_type(out, HttpResponse)
    assert req.body == b"req" and req.headers[-1] == ("x-req-trailer", "1")
    assert (info.status, info.informational, info.body) == (103, True, b"")
    assert ("link", "</a.css>; rel=preload") in info.headers
    assert (final.status, final.informational, final.complete) == (200, False, True)
    assert final.body == b"padded body" and final.body_size == 11  # padding not counted
    assert final.headers[-1] == ("grpc-status", "0")
    assert (req.start_ns, req.end_ns, info.start_ns, final.start_ns, final.end_ns) == \
        (3, 4, 5, 6, 7)


def test_control_frames_and_table_size_settings() -> None:
    out = parse(control_frames())
    assert [r.body for r in of_type(out, HttpResponse)] == [b"a", b"/b", b"/c"]
    assert [dict(r.headers).get("x-repeat") for r in of_type(out, HttpResponse)][1:] == \
        ["same value each time"] * 2
    frames = of_type(out, Http2Frame)
    kinds = {(f.side, f.type, f.detail) for f in frames}
    assert ("client", "SETTINGS", "HEADER_TABLE_SIZE=8192") in kinds
    assert ("server", "SETTINGS", "ack") in kinds
    assert ("server", "PING", "opaque=70696e67706f6e67") in kinds
    assert ("client", "PING", "ack opaque=70696e67706f6e67") in kinds
    assert ("server", "UNKNOWN(0xfa)", "length=3") in kinds
    assert ("server", "GOAWAY", "last_stream_id=5 error_code=NO_ERROR") in kinds
    assert next(f for f in frames if f.type == "UNKNOWN(0xfa)").flags == ("0x01",)
    assert not of_type(out, ProtocolError)


def test_rst_stream_push_promise_and_close() -> None:
    out = parse(reset_and_push())
    rst = next(f for f in of_type(out, Http2Frame) if f.type == "RST_STREAM")
    assert (rst.side, rst.stream_id, rst.detail) == ("client", 1, "error_code=CANCEL")
    cut = out[out.index(rst) + 1]
    assert isinstance(cut, HttpResponse) and not cut.complete
    assert (cut.stream_id, cut.body, cut.end_ns) == (1, b"partial", rst.ts_ns)
    push = next(f for f in of_type(out, Http2Frame) if f.type == "PUSH_PROMISE")
    assert push.detail == "promised_stream_id=2 GET example.test /style.css"
    resps = {r.stream_id: r for r in of_type(out, HttpResponse)}
    assert (resps[2].body, resps[3].body) == (b"body{}", b"<html>")
    assert [r.path for r in of_type(out, HttpRequest)] == ["/stream", "/page", "/open"]
    last = out[-1]  # from close(): the response still open
    assert isinstance(last, HttpResponse) and (last.stream_id, last.body, last.complete) == \
        (5, b"half", False)


def test_header_blocks_on_closed_streams_still_feed_the_table() -> None:
    conv = Conversation()
    gone = conv.request("/gone")
    conv.client.reset_stream(gone, ErrorCodes.CANCEL)
    live = conv.request("/live")
    encoder = hpack.Encoder()  # stands in for the server's, which has encoded nothing yet
    headers = [(":status", "200"), ("x-session", "kept in the dynamic table")]
    conv.inject("server", frame(0x1, 0x5, gone, encoder.encode(headers)))
    second = encoder.encode(headers)
    assert len(second) <= 3  # only table references: wrong unless the first block was decoded
    conv.inject("server", frame(0x1, 0x5, live, second))
    (resp,) = of_type(parse(conv.script), HttpResponse)
    assert (resp.stream_id, resp.headers) == (live, tuple(headers))


def test_one_mib_body_in_16k_pieces_is_fast_and_exact() -> None:
    body = random.Random(1).randbytes(1 << 20)
    conv = Conversation()
    sid = conv.request("/blob")
    conv.respond(sid, extra=[("content-type", "application/octet-stream")], end=False)
    conv.send_body("server", sid, body)
    conv.pump()
    # Re-cut the server's bytes into 16 KiB pieces, so that frames straddle feeds.
    stream = side_bytes(conv.script, "server")
    pieces = [stream[i:i + 16384] for i in range(0, len(stream), 16384)]
    parser = Http2Parser()
    out = parser.feed("client", side_bytes(conv.script, "client"), 0)
    began = time.perf_counter()
    for n, piece in enumerate(pieces):
        out += parser.feed("server", piece, n + 1)
    out += parser.close()
    elapsed = time.perf_counter() - began
    (resp,) = of_type(out, HttpResponse)
    assert resp.body == body and resp.body_size == len(body) and resp.complete
    assert resp.end_ns == len(pieces)
    assert elapsed < 1.0, f"{elapsed:.2f}s for 1 MiB"


def test_close_mid_stream() -> None:
    conv = Conversation()
    sid = conv.request("/upload", body=b"first part", end=False)
    conv.respond(sid, end=False)
    parser = Http2Parser()
    for ts, (side, data) in enumerate(conv.script):
        assert not any(isinstance(m, HttpRequest | HttpResponse)
                       for m in parser.feed(side, data, ts))
    req, resp = parser.close()
    assert isinstance(req, HttpRequest) and isinstance(resp, HttpResponse)
    assert (req.complete, req.body) == (False, b"first part")
    assert (resp.complete, resp.status) == (False, 200)
    assert parser.close() == []


# -- corrupt input ----------------------------------------------------------------------------

def test_garbage_after_preface() -> None:
    script: Script = [("client", PREFACE + b"this is not an HTTP/2 frame at all"),
              ("server", get_200()[1][1]), ("client", b"more junk")]
    out = parse(script)
    errors = of_type(out, ProtocolError)
    assert [(e.side, e.protocol) for e in errors] == [("client", "http2")]
    assert of_type(out, RawData) == [RawData("client", b"this is not an HTTP/2 frame at all", 0),
                                     RawData("client", b"more junk", 2)]
    assert [f.side for f in of_type(out, Http2Frame)] == ["server", "server"]  # still parsed


def test_missing_preface() -> None:
    out = parse([("client", b"GET / HTTP/1.1\r\n\r\n")])  # an HTTP/1 client
    assert out == [ProtocolError("client", "http2", "missing client connection preface", 0),
                   RawData("client", b"GET / HTTP/1.1\r\n\r\n", 0)]


def test_bad_hpack_breaks_that_direction_only() -> None:
    conv = Conversation()
    first = conv.request("/one")
    # Indexed field 0x7f+... refers far beyond both tables: COMPRESSION_ERROR (RFC 7541 §2.3.3).
    conv.inject("client", frame(0x1, 0x5, 99, b"\xff\xff\x7f"))
    second = conv.request("/two")
    conv.respond(first, body=b"1")
    conv.respond(second, body=b"2")
    out = parse(conv.script)
    (error,) = of_type(out, ProtocolError)
    assert error.side == "client" and error.reason.startswith("InvalidTableIndex")
    assert [r.path for r in of_type(out, HttpRequest)] == ["/one"]
    assert of_type(out, RawData)[0].data.startswith(frame(0x1, 0x5, 99, b"\xff\xff\x7f"))
    assert [(r.stream_id, r.body) for r in of_type(out, HttpResponse)] == [(1, b"1"), (3, b"2")]


@pytest.mark.parametrize("table_size", [None, 8192])
def test_hpack_table_size_follows_acked_settings(table_size: int | None) -> None:
    conv = Conversation({SettingCodes.HEADER_TABLE_SIZE: table_size} if table_size else None)
    sid = conv.request("/")
    # A dynamic table size update to 8192 (RFC 7541 §6.3), then :status 200 (static index 8).
    conv.inject("server", frame(0x1, 0x5, sid, b"\x3f\xe1\x3f\x88"))
    out = parse(conv.script)
    if table_size:  # the client allowed it and the server ACKed: fine
        assert [r.status for r in of_type(out, HttpResponse)] == [200]
        assert not of_type(out, ProtocolError)
    else:  # beyond the 4096 default (RFC 9113 §6.5.2): the server's encoder is broken
        (error,) = of_type(out, ProtocolError)
        assert error.side == "server" and error.reason.startswith("InvalidTableSizeError")
        assert [r.path for r in of_type(out, HttpRequest)] == ["/"]


@pytest.mark.parametrize(("side", "data", "reason", "raw_from"), [
    ("server", frame(0x0, 0, 1, bytes(16385)), "frame too large", 0),  # RFC 9113 §4.2
    ("server", frame(0x6, 0, 0, b"short"), "InvalidFrameError", 0),  # PING is 8 bytes
    ("server", frame(0x1, 0x0, 1, b"\x82") + frame(0x6, 0, 0, bytes(8)),
     "header block interrupted", 10),  # RFC 9113 §6.10; raw from the PING on
    ("client", frame(0x9, 0x4, 1, b"\x82"), "CONTINUATION without a header block", 0),
    ("client", frame(0x0, 0x8, 1, b"\x09abc"), "InvalidPaddingError", 0),
    ("client", frame(0x8, 0, 0, b"\x00\x00"), "InvalidFrameError", 0),
])
def test_frame_errors(side: Side, data: bytes, reason: str, raw_from: int) -> None:
    script = [*get_200()[:3], (side, data), *get_200()[3:]]
    out = parse(script)
    (error,) = of_type(out, ProtocolError)
    assert error.side == side and error.reason.startswith(reason)
    assert of_type(out, RawData)[0].data.startswith(data[raw_from:])
    # the other side's messages all still come out
    other = HttpResponse if side == "client" else HttpRequest
    assert len(of_type(out, other)) == 1


# -- splitting and fuzzing --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_byte_by_byte_matches_whole(name: str) -> None:
    parse(SCENARIOS[name]())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@given(data=st.data())
def test_any_split_matches_whole(name: str, data: st.DataObject) -> None:
    script = SCENARIOS[name]()
    cuts = data.draw(cuts_for(script))
    assert feed_all(Http2Parser, script, cuts) == feed_all(Http2Parser, script)


@given(paths=st.lists(st.text("abcxyz/", max_size=12), min_size=1, max_size=8),
       order=st.randoms(use_true_random=False), data=st.data())
def test_random_conversations_pair_up(paths: list[str], order: random.Random,
                                      data: st.DataObject) -> None:
    conv = Conversation()
    sids = {conv.request("/" + p, [("x-p", p)]): p for p in paths}
    pending = list(sids)
    order.shuffle(pending)
    for sid in pending:
        conv.respond(sid, extra=[("x-p", sids[sid])], body=sids[sid].encode() * 3)
    out = feed_all(Http2Parser, conv.script, data.draw(cuts_for(conv.script)))
    assert {r.stream_id: r.path for r in of_type(out, HttpRequest)} == \
        {sid: "/" + p for sid, p in sids.items()}
    assert [(r.stream_id, r.body) for r in of_type(out, HttpResponse)] == \
        [(sid, sids[sid].encode() * 3) for sid in pending]


@given(junk=st.binary(max_size=300), server_junk=st.binary(max_size=300), data=st.data())
def test_random_bytes_after_preface_never_raise(junk: bytes, server_junk: bytes,
                                                data: st.DataObject) -> None:
    script: Script = [("client", PREFACE + junk), ("server", server_junk), ("client", junk)]
    out = feed_every_way(Http2Parser, script, data.draw(cuts_for(script)))
    assert len(of_type(out, ProtocolError)) <= 2


@given(name=st.sampled_from(sorted(SCENARIOS)), data=st.data())
def test_cut_conversation_plus_junk_never_raises(name: str, data: st.DataObject) -> None:
    script = list(SCENARIOS[name]())
    index = data.draw(st.integers(0, len(script) - 1))
    side, chunk = script[index]
    cut = data.draw(st.integers(0, len(chunk)))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    script = [*script[:index], (side, chunk[:cut] + junk), *script[index + 1:]]
    out = feed_all(Http2Parser, script)
    assert feed_all(Http2Parser, script, data.draw(cuts_for(script))) == out
    assert len({e.side for e in of_type(out, ProtocolError)}) == len(of_type(out, ProtocolError))


# Well-formed frame headers around random payloads, so the fuzzer gets past the length check
# into every frame type's handling (HPACK blocks, padding, RST on unknown streams, ...).
FRAMES = st.builds(frame, st.integers(0, 0xC), st.integers(0, 0xFF), st.integers(0, 7),
                   st.binary(max_size=40))


@given(client=st.lists(FRAMES, max_size=6), server=st.lists(FRAMES, max_size=6))
def test_random_frames_on_a_live_connection_never_raise(client: list[bytes],
                                                        server: list[bytes]) -> None:
    script: Script = [*get_200(), *(("client", f) for f in client),
                      *(("server", f) for f in server)]
    out = feed_all(Http2Parser, script)
    assert feed_all(Http2Parser, script, "bytes") == out
    assert len(of_type(out, ProtocolError)) <= 2


def test_split_script_gives_chunk_ts_to_pieces() -> None:  # guards the helper we rely on
    assert split_script([("client", b"abc")], [[1]]) == [("client", b"a", 0),
                                                        ("client", b"bc", 0)]

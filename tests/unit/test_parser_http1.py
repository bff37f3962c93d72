"""Http1Parser: scripted conversations fed whole, byte by byte and split at hypothesis-chosen
points must all give the same messages (ecapture.testing.feeding); plus fuzzing."""

from __future__ import annotations

import gzip
import time
import zlib

from hypothesis import given
from hypothesis import strategies as st

from ecapture.parsers.http1 import Http1Parser
from ecapture.parsers.messages import (
    HttpRequest,
    HttpResponse,
    Message,
    ProtocolError,
    RawData,
    Side,
)
from ecapture.testing.feeding import Script, cuts_for, feed_all, feed_every_way, split_script

Conversation = list[tuple[Side, bytes]]


def every_way(script: Script, data: st.DataObject | None = None) -> list[Message]:
    cuts = data.draw(cuts_for(script), label="cuts") if data is not None else None
    return feed_every_way(Http1Parser, script, cuts)


def req(method: str = "GET", path: str = "/", body: bytes = b"", extra: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: example.com\r\n{extra}{length}\r\n".encode() + body


def resp(status: int = 200, body: bytes = b"", extra: str = "", reason: str = "OK") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def kinds(messages: list[Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


@given(st.data())
def test_simple_get(data: st.DataObject) -> None:
    script: Script = [("client", req(path="/index.html")), ("server", resp(body=b"hello"))]
    request, response = every_way(script, data)
    assert request == HttpRequest("1.1", "GET", "example.com", "/index.html",
                                  (("host", "example.com"),), b"", 0, 0, 0)
    assert isinstance(response, HttpResponse)
    assert (response.status, response.reason, response.body, response.body_size) == (
        200, "OK", b"hello", 5)
    assert response.headers == (("content-length", "5"),)
    assert (response.start_ns, response.end_ns, response.complete) == (1, 1, True)


@given(st.data())
def test_keep_alive_three_requests(data: st.DataObject) -> None:
    script: Conversation = []
    for i in range(3):
        script += [("client", req(path=f"/{i}")), ("server", resp(body=b"r%d" % i))]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse"] * 3
    assert [m.path for m in out if isinstance(m, HttpRequest)] == ["/0", "/1", "/2"]
    assert [m.body for m in out if isinstance(m, HttpResponse)] == [b"r0", b"r1", b"r2"]
    assert [m.start_ns for m in out if isinstance(m, HttpRequest | HttpResponse)] == [*range(6)]


@given(st.data())
def test_pipelined_requests(data: st.DataObject) -> None:
    script: Script = [("client", req(path="/a") + req(path="/b")),
                      ("server", resp(body=b"A")), ("server", resp(body=b"B"))]
    out = every_way(script, data)
    # The second request is parsed only once the first response is done, but keeps its own ts.
    assert kinds(out) == ["HttpRequest", "HttpResponse", "HttpRequest", "HttpResponse"]
    a, ra, b, rb = out
    assert isinstance(a, HttpRequest) and isinstance(b, HttpRequest)
    assert (a.path, b.path, b.start_ns, b.end_ns) == ("/a", "/b", 0, 0)
    assert isinstance(ra, HttpResponse) and isinstance(rb, HttpResponse)
    assert (ra.body, rb.body, rb.start_ns) == (b"A", b"B", 2)


@given(st.data())
def test_chunked_response_with_trailers(data: st.DataObject) -> None:
    body = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n")
    script: Script = [("client", req()), ("server", body[:40]), ("server", body[40:])]
    _, response = every_way(script, data)
    assert isinstance(response, HttpResponse)
    assert (response.body, response.body_size) == (b"hello world", 11)
    # Trailers follow the header fields.
    assert response.headers[-1] == ("x-sum", "42")
    assert (response.start_ns, response.end_ns) == (1, 2)


@given(st.data())
def test_gzip_and_deflate_bodies(data: st.DataObject) -> None:
    text = b"compressible " * 50
    raw_deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    encoded = {
        "gzip": gzip.compress(text),
        "deflate": zlib.compress(text),
        "deflate ": raw_deflater.compress(text) + raw_deflater.flush(),  # raw deflate
    }
    script: Conversation = []
    for coding, payload in encoded.items():
        script += [("client", req()),
                   ("server", resp(body=payload, extra=f"Content-Encoding: {coding.strip()}\r\n"))]
    responses = [m for m in every_way(script, data) if isinstance(m, HttpResponse)]
    assert [m.body for m in responses] == [text] * 3
    assert [m.body_size for m in responses] == [len(p) for p in encoded.values()]


def test_undecodable_body_is_kept_raw() -> None:
    bogus = b"not gzip at all"
    script: Script = [("client", req()),
                      ("server", resp(body=bogus, extra="Content-Encoding: gzip\r\n"))]
    out = every_way(script)
    assert kinds(out) == ["HttpRequest", "HttpResponse"]
    assert isinstance(out[1], HttpResponse) and out[1].body == bogus


@given(st.data())
def test_head_response_has_no_body(data: st.DataObject) -> None:
    script: Script = [
        ("client", req("HEAD", "/big")),
        ("server", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        ("client", req(path="/next")),
        ("server", resp(body=b"next")),
    ]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse", "HttpRequest", "HttpResponse"]
    head_resp, next_resp = out[1], out[3]
    assert isinstance(head_resp, HttpResponse) and isinstance(next_resp, HttpResponse)
    assert (head_resp.body, head_resp.body_size, next_resp.body) == (b"", 0, b"next")


@given(st.data())
def test_100_continue(data: st.DataObject) -> None:
    script: Script = [
        ("client", b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 4\r\n\r\n"),
        ("server", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("client", b"data"),
        ("server", resp(201, reason="Created")),
    ]
    out = every_way(script, data)
    assert kinds(out) == ["HttpResponse", "HttpRequest", "HttpResponse"]
    cont, put, created = out
    assert isinstance(cont, HttpResponse) and cont.informational and cont.status == 100
    assert isinstance(put, HttpRequest)
    assert (put.body, put.start_ns, put.end_ns) == (b"data", 0, 2)
    assert isinstance(created, HttpResponse) and not created.informational
    assert created.status == 201


@given(st.data())
def test_upgrade_then_raw_both_ways(data: st.DataObject) -> None:
    script: Script = [
        ("client", req(path="/chat", extra="Upgrade: websocket\r\nConnection: Upgrade\r\n")),
        ("server", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\n\r\n\x81\x02hi"),
        ("client", b"\x81\x82abcd\x01\x02"),
        ("server", b"GET / HTTP/1.1\r\n\r\n"),  # looks like HTTP, but isn't any more
    ]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse", "RawData", "RawData", "RawData"]
    switch = out[1]
    assert isinstance(switch, HttpResponse) and switch.informational and switch.status == 101
    assert out[2:] == [RawData("server", b"\x81\x02hi", 1),
                       RawData("client", b"\x81\x82abcd\x01\x02", 2),
                       RawData("server", b"GET / HTTP/1.1\r\n\r\n", 3)]


@given(st.data())
def test_connect_tunnel(data: st.DataObject) -> None:
    script: Script = [
        ("client", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        ("server", b"HTTP/1.1 200 Connection established\r\n\r\n"),
        ("client", b"\x16\x03\x01\x00\x05hello"),
    ]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse", "RawData"]
    assert isinstance(out[1], HttpResponse) and out[1].complete and out[1].body == b""


@given(st.data())
def test_body_delimited_by_close(data: st.DataObject) -> None:
    script: Script = [
        ("client", b"GET /old HTTP/1.0\r\n\r\n"),
        ("server", b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, "),
        ("server", b"part two"),
    ]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse"]
    request, response = out
    assert isinstance(request, HttpRequest) and request.http_version == "1.0"
    assert request.authority == ""
    assert isinstance(response, HttpResponse)
    assert (response.body, response.complete, response.end_ns) == (
        b"part one, part two", True, 2)
    # Until close() it is not known to be over.
    parser = Http1Parser()
    fed = [m for side, chunk, ts in split_script(script) for m in parser.feed(side, chunk, ts)]
    assert kinds(fed) == ["HttpRequest"]
    assert kinds(parser.close()) == ["HttpResponse"]


@given(st.data())
def test_http10_keep_alive(data: st.DataObject) -> None:
    # h11 alone would end the connection after an HTTP/1.0 exchange.
    ask = b"GET /%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n%d"
    script: Conversation = []
    for i in range(3):
        script += [("client", ask % i), ("server", answer % i)]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse"] * 3
    assert [m.body for m in out if isinstance(m, HttpResponse)] == [b"0", b"1", b"2"]


@given(st.data())
def test_post_with_body(data: st.DataObject) -> None:
    script: Script = [("client", req("POST", "/form", body=b"a=1&b=2")),
                      ("server", resp(204, reason="No Content"))]
    request, response = every_way(script, data)
    assert isinstance(request, HttpRequest)
    assert (request.method, request.body, request.body_size) == ("POST", b"a=1&b=2", 7)
    assert isinstance(response, HttpResponse) and response.status == 204


def test_large_chunked_body_is_fast() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    pieces = [payload[i:i + 4000] for i in range(0, len(payload), 4000)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    script: Conversation = [("client", req())]
    script += [("server", wire[i:i + 16384]) for i in range(0, len(wire), 16384)]
    started = time.perf_counter()
    out = feed_all(Http1Parser, script)
    elapsed = time.perf_counter() - started
    assert kinds(out) == ["HttpRequest", "HttpResponse"]
    response = out[1]
    assert isinstance(response, HttpResponse)
    assert response.body == payload and response.body_size == len(payload)
    assert (response.start_ns, response.end_ns) == (1, len(script) - 1)
    assert elapsed < 0.5, f"took {elapsed:.2f}s"


@given(st.data())
def test_garbage_from_client(data: st.DataObject) -> None:
    script: Script = [
        ("client", b"\x16\x03\x01\x02\x00junk\r\n\r\n"),
        ("client", b"more junk"),
        ("server", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
    ]
    out = every_way(script, data)
    assert kinds(out) == ["ProtocolError", "RawData", "HttpResponse"]
    error, raw = out[0], out[1]
    assert isinstance(error, ProtocolError) and (error.side, error.protocol) == ("client", "http1")
    assert raw == RawData("client", b"\x16\x03\x01\x02\x00junk\r\n\r\nmore junk", 0)


@given(st.data())
def test_error_after_good_request(data: st.DataObject) -> None:
    script: Script = [
        ("client", req(path="/ok")),
        ("server", resp(body=b"fine")),
        ("client", b"NOT HTTP AT ALL\r\n\r\n"),
        ("server", b"whatever the server says\r\n\r\n"),
    ]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse", "ProtocolError", "RawData",
                          "ProtocolError", "RawData"]
    # Each side's error is reported once; the server can't be followed without requests.
    assert [m.side for m in out if isinstance(m, ProtocolError)] == ["client", "server"]


@given(st.data())
def test_truncated_capture(data: st.DataObject) -> None:
    script: Script = [("client", req("POST", "/upload", body=b"0123456789")[:-4]),
                      ("server", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")]
    out = every_way(script, data)
    assert kinds(out) == ["HttpRequest", "HttpResponse"]
    request, response = out
    assert isinstance(request, HttpRequest)
    assert (request.complete, request.body, request.body_size) == (False, b"012345", 6)
    assert isinstance(response, HttpResponse)
    assert (response.complete, response.body) == (False, b"ab")


def test_truncated_head_is_raw() -> None:
    out = every_way([("client", b"GET / HTTP/1.1\r\nHost: a\r\n")])
    assert out == [RawData("client", b"GET / HTTP/1.1\r\nHost: a\r\n", 0)]


def test_oversized_head() -> None:
    big = req(extra="X-Big: " + "a" * 70_000 + "\r\n")
    out = feed_every_way(Http1Parser, [("client", big)], byte_by_byte=False,
                         cuts=[list(range(0, len(big), 1000))])
    assert kinds(out) == ["ProtocolError", "RawData"]


def test_feed_after_close_and_empty_feed() -> None:
    parser = Http1Parser()
    assert parser.feed("client", b"", 0) == []
    assert parser.close() == []
    assert parser.feed("server", b"x", 1) == [RawData("server", b"x", 1)]


SIDE_NAMES: list[Side] = ["client", "server"]
SIDES = st.sampled_from(SIDE_NAMES)


@given(st.lists(st.tuples(SIDES, st.binary(min_size=1, max_size=64)), max_size=8), st.data())
def test_fuzz_random_bytes(script: Script, data: st.DataObject) -> None:
    out = every_way(script, data)
    assert all(isinstance(m, HttpRequest | HttpResponse | ProtocolError | RawData) for m in out)
    assert len([m for m in out if isinstance(m, ProtocolError)]) <= 2


CONVERSATION: Script = [
    ("client", req("POST", "/a", body=b"xyz", extra="Expect: 100-continue\r\n")),
    ("server", b"HTTP/1.1 100 Continue\r\n\r\n"),
    ("server", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("client", req("HEAD", "/b") + req(path="/c")),
    ("server", resp(body=b"12345") + resp(body=gzip.compress(b"zz"),
                                          extra="Content-Encoding: gzip\r\n")),
]


@given(st.integers(0, sum(len(d) for _, d in CONVERSATION)),
       st.lists(st.tuples(SIDES, st.binary(min_size=1, max_size=32)), max_size=3), st.data())
def test_fuzz_cut_conversation_with_junk(cut: int, junk: Script, data: st.DataObject) -> None:
    script: Conversation = []
    left = cut
    for side, chunk in CONVERSATION:
        if left <= 0:
            break
        script.append((side, chunk[:left]))
        left -= len(chunk)
    out = every_way([*script, *junk], data)
    assert all(isinstance(m, HttpRequest | HttpResponse | ProtocolError | RawData) for m in out)
    errors = [m.side for m in out if isinstance(m, ProtocolError)]
    assert len(errors) == len(set(errors))


FRAGMENTS = {
    "client": [req(), req("HEAD", "/h"), req("POST", "/p", body=b"body"),
               req(extra="Expect: 100-continue\r\n", body=b"xy"),
               req(extra="Upgrade: foo\r\nConnection: Upgrade\r\n"),
               b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
               req(extra="Connection: close\r\n"), b"\r\n", b"junk\r\n\r\n",
               b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
    "server": [resp(body=b"ok"), resp(304, reason="Not Modified"),
               b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching\r\nUpgrade: foo\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
               b"HTTP/1.0 200 OK\r\n\r\nuntil close",
               resp(body=b"bye", extra="Connection: close\r\n"),
               b"\x00junk\r\n\r\n",
               b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nk"],
}


@st.composite
def fragment_scripts(draw: st.DrawFn) -> Script:
    script: Conversation = []
    for _ in range(draw(st.integers(1, 8))):
        side: Side = draw(SIDES)
        fragment = draw(st.sampled_from(FRAGMENTS[side]))
        if draw(st.booleans()):  # sometimes only part of it
            fragment = fragment[:draw(st.integers(1, len(fragment)))]
        script.append((side, fragment))
    return script


@given(fragment_scripts(), st.data())
def test_fuzz_fragments_split_invariant(script: Script, data: st.DataObject) -> None:
    out = every_way(script, data)
    errors = [m.side for m in out if isinstance(m, ProtocolError)]
    assert len(errors) == len(set(errors))
    for m in out:
        if isinstance(m, HttpRequest | HttpResponse):
            assert m.start_ns <= m.end_ns


@given(st.data())
def test_response_whose_request_predates_the_capture(data: st.DataObject) -> None:
    """A keep-alive connection older than the capture: its first bytes are a response.
    It stands alone, and every later response pairs with its own request, not one late."""
    script: Conversation = [("server", resp(body=b"r0"))]
    for i in range(1, 5):
        script += [("client", req(path=f"/{i}")), ("server", resp(body=b"r%d" % i))]
    out = every_way(script, data)
    assert kinds(out) == ["HttpResponse"] + ["HttpRequest", "HttpResponse"] * 4
    assert [m.body for m in out if isinstance(m, HttpResponse)] == [b"r0", b"r1", b"r2", b"r3",
                                                                      b"r4"]
    assert all(m.complete for m in out if isinstance(m, HttpRequest | HttpResponse))


def test_response_whose_request_predates_the_capture_is_out_at_its_last_byte() -> None:
    """Each response comes out when its last byte is fed, not when the next request (or
    the end of the connection) comes: the last one is not left for close() to flush raw."""
    parser = Http1Parser()
    assert kinds(parser.feed("server", resp(body=b"r0"), 0)) == ["HttpResponse"]
    for i in range(1, 4):
        assert kinds(parser.feed("client", req(path=f"/{i}"), 2 * i)) == ["HttpRequest"]
        assert kinds(parser.feed("server", resp(body=b"r%d" % i), 2 * i + 1)) == ["HttpResponse"]
    assert parser.close() == []

"""Conversations: data events -> exchanges, with roles, connection identity, fd reuse,
reordering, and raw fallback; plus the replay filters and the json model's shape."""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import replace

from ecapture.events import Conn, TlsData
from ecapture.exchanges import HttpExchange
from ecapture.filters import EventFilter, parse_when
from ecapture.outputs.jsonl import JsonOutput
from ecapture.streams import Conversations

REQ = b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def conn(kind: str = "connect", fd: int = 5, sock: int = 77, ts: int = 1) -> Conn:
    return Conn(timestamp_ns=ts, kind=kind, pid=10, tid=10, uid=0, comm="curl", fd=fd,  # type: ignore[arg-type]
                sock=sock, family=2, laddr="127.0.0.1", lport=40000, raddr="127.0.0.1",
                rport=443)


def data(direction: str, payload: bytes, ts: int, c: Conn | None, ssl: int = 0xA) -> TlsData:
    return TlsData(timestamp_ns=ts, pid=10, tid=10, uid=0, comm="curl", fd=5, version=0x0304,
                   direction=direction, func="SSL_write" if direction == "write" else "SSL_read",  # type: ignore[arg-type]
                   conn_id=ssl, data=payload, total_len=len(payload), conn=c)


def run(events: list[object], reorder_ns: int = 0) -> list[object]:
    conv = Conversations(reorder_ns)
    out: list[object] = []
    for ev in events:
        out.extend(conv.feed(ev))
    out.extend(conv.finish())
    return out


def only(kind: type, items: list[object]) -> list:  # type: ignore[type-arg]
    return [i for i in items if isinstance(i, kind)]


def test_client_exchange() -> None:
    c = conn()
    out = run([c, data("write", REQ, 2, c), data("read", RESP, 3, c)])
    (ex,) = only(HttpExchange, out)
    assert ex.role == "client" and ex.protocol == "http1"
    assert ex.request.path == "/x" and ex.response.body == b"hello"
    assert ex.latency_ns == 1 and ex.conn is c


def test_server_side_is_the_mirror() -> None:
    c = conn("accept")
    out = run([c, data("read", REQ, 2, c), data("write", RESP, 3, c)])
    (ex,) = only(HttpExchange, out)
    assert ex.role == "server" and ex.response.status == 200


def test_role_detected_without_connection_events() -> None:
    out = run([data("read", REQ, 2, None), data("write", RESP, 3, None)])
    (ex,) = only(HttpExchange, out)
    assert ex.role == "server" and ex.request.path == "/x"


def test_unknown_protocol_passes_through() -> None:
    blob = bytes(range(256))
    ev = data("write", blob, 2, None)
    assert run([ev]) == [ev]


def test_reused_fd_ends_the_old_conversation() -> None:
    first, second = conn(sock=1, ts=1), conn(sock=2, ts=10)
    out = run([first, data("write", REQ, 2, first), second,
               data("write", REQ, 11, second, ssl=0xB), data("read", RESP, 12, second, ssl=0xB)])
    exchanges = only(HttpExchange, out)
    assert [(e.conn.sock, e.response is not None) for e in exchanges] == [(1, False), (2, True)]


def test_reordering_window_restores_timestamp_order() -> None:
    c = conn()
    # A per-CPU buffer delivered the response before the request.
    events = [c, data("read", RESP, 30, c), data("write", REQ, 20, c)]
    (ex,) = only(HttpExchange, run(events, reorder_ns=50))
    assert ex.request is not None and ex.response is not None


def test_close_flushes_unanswered_request() -> None:
    c = conn()
    out = run([c, data("write", REQ, 2, c), replace(c, kind="close", timestamp_ns=5)])
    (ex,) = only(HttpExchange, out)
    assert ex.response is None


def test_cli_replay_filters_by_comm_and_port(capsys) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from ecapture.cli import main

    rec = Path(__file__).resolve().parents[2] / "fixtures/recordings/tls/curl_http2.ecap"
    assert main(["replay", str(rec), "-m", "json", "--comm", "nghttpd"]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert objs and {o["comm"] for o in objs if "comm" in o} == {"nghttpd"}
    assert main(["replay", str(rec), "-m", "json", "--port", "1"]) == 0
    assert capsys.readouterr().out == ""


def test_filters() -> None:
    c = conn()
    ev = data("write", REQ, 2_000_000_000, c)
    assert EventFilter(pid=10)(ev) and not EventFilter(pid=11)(ev)
    assert EventFilter(comm="curl")(ev) and not EventFilter(comm="wget")(ev)
    assert EventFilter(port=443)(ev) and EventFilter(port=40000)(ev)
    assert not EventFilter(port=80)(ev)
    assert EventFilter(host="127.0.0.1")(ev) and not EventFilter(host="10.0.0.1")(ev)
    assert not EventFilter(port=443)(replace(ev, conn=None))
    keep, other = EventFilter(port=443), conn(fd=6)
    assert keep(c) and keep(replace(c, kind="close"))  # the close of a kept connection
    assert not keep(replace(other, kind="close"))  # ... but not of one never let through
    offset = parse_when("2026-01-01T00:00:00+00:00")
    assert EventFilter(since_ns=offset + 1_000_000_000, clock_offset_ns=offset)(ev)
    assert not EventFilter(since_ns=offset + 3_000_000_000, clock_offset_ns=offset)(ev)
    assert not EventFilter(until_ns=offset + 1_000_000_000, clock_offset_ns=offset)(ev)


def json_objects(events: list[object]) -> list[dict]:  # type: ignore[type-arg]
    """The json model's objects for these events."""
    buf = io.StringIO()
    sink = JsonOutput(buf, 0, tz=dt.UTC)
    for ev in events:
        sink.write(ev)  # type: ignore[arg-type]
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_have_the_documented_fields() -> None:
    c = conn()
    objs = json_objects(run([c, data("write", REQ, 2, c), data("read", RESP, 3, c),
                             data("write", b"\xff\xfe", 4, None, ssl=0xC)]))
    kinds = [o["type"] for o in objs]
    assert kinds == ["conn", "http", "data"]
    http = objs[1]
    assert http["request"]["path"] == "/x" and http["response"]["body"] == "hello"
    assert http["client"] == "127.0.0.1:40000" and http["server"] == "127.0.0.1:443"
    assert objs[2]["data_encoding"] == "base64" and objs[2]["data"] == "//4="
    for o in objs:
        assert o["time"].startswith("1970-01-01T00:00:00")


def test_unknown_endpoints_are_null_in_json_and_question_marks_in_text() -> None:
    """docs/json.md: an endpoint is null when unknown, never the text model's "?"."""
    from ecapture.render import Style

    unknown = replace(conn(kind="accept"), family=0, laddr="?", lport=0, raddr="?", rport=0)
    out = run([unknown, data("read", REQ, 2, unknown), data("write", RESP, 3, unknown),
               data("write", b"\xff\xfe", 4, None, ssl=0xC)])
    objs = json_objects(out)
    assert [o["type"] for o in objs] == ["conn", "http", "data"]
    assert (objs[0]["local"], objs[0]["remote"]) == (None, None)
    assert (objs[1]["client"], objs[1]["server"]) == (None, None)
    assert (objs[2]["local"], objs[2]["remote"]) == (None, None)
    style = Style()
    assert "? -> ?" in out[0].text_line()  # type: ignore[attr-defined]
    assert "pid 10  ? -> ?  HTTP/1.1" in out[1].text(style)  # type: ignore[attr-defined]


def test_idle_undecided_conversation_is_flushed_raw() -> None:
    from ecapture.streams import IDLE_NS

    c = conn()
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # a server speaking first
    conv = Conversations()
    first = data("read", settings, 10, c)
    assert list(conv.feed(c)) == [c]
    assert list(conv.feed(first)) == []  # held: the client has not spoken yet
    later = data("write", REQ, 10 + IDLE_NS + 2, c, ssl=0xB)  # another connection moves time
    assert list(conv.feed(later)) == [first]
    assert list(conv.tick(10)) == []


def test_connection_older_than_the_capture_shows_raw_bytes_at_once() -> None:
    """A connection found in /proc says nothing of which side is the client. Bytes that
    neither HTTP/1 nor an HTTP/2 server could start with go out as they come, from either
    side, as on a connection whose accept was seen, not when the other side speaks."""
    old = conn(kind="proc")
    conv = Conversations()
    assert conv.feed(old) == [old]
    for i, direction in enumerate(("write", "write", "read")):
        ev = data(direction, b"\x17binary %d" % i, 2 + i, old)
        assert conv.feed(ev) == [ev]
    # The same on an accepted connection whose server speaks first (an SMTP-like banner).
    accepted = conn(kind="accept", fd=6, sock=78)
    banner = replace(data("write", b"220 mail.example ESMTP\r\n", 9, accepted, ssl=0xD), fd=6)
    assert conv.feed(accepted) == [accepted]
    assert conv.feed(banner) == [banner]


def test_http2_settings_alone_still_waits_for_the_client() -> None:
    old = conn(kind="proc")
    conv = Conversations()
    conv.feed(old)
    settings = data("read", b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64", 2,
                    old)
    assert conv.feed(settings) == []
    preface = data("write", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 3, old)
    out = conv.feed(preface)
    assert not [e for e in out if isinstance(e, TlsData)]  # parsed as HTTP/2, not raw


def test_a_call_short_of_bytes_is_said_not_taken_for_the_end_of_the_capture() -> None:
    """A call whose bytes did not all arrive (a lost chunk, or a read the kernel refused)
    leaves a hole in its side's stream: the parser is told, which says so once and shows
    that side's bytes raw from there, instead of an exchange 'incomplete: the capture
    ended first' long before the capture ended."""
    from ecapture.exchanges import ProtocolNotice

    c = conn()
    body = b"x" * 100
    post = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + body
    short = replace(data("write", post[:60], 2, c), total_len=len(post))
    later = data("write", b"more bytes", 3, c)
    out = run([c, short, later, data("read", RESP, 4, c)])
    notices = only(ProtocolNotice, out)
    assert [(n.error.side, n.error.reason) for n in notices] == [
        ("client", f"{len(post) - 60} bytes missing (lost, or the kernel would not copy them)")]
    raw = [e for e in only(TlsData, out) if e.direction == "write"]
    assert b"".join(e.data for e in raw) == post[:60] + b"more bytes"
    assert not [e for e in only(HttpExchange, out) if e.request is not None
                and not e.request.complete]


def test_an_http2_side_short_of_bytes_goes_raw() -> None:
    from ecapture.parsers.http2 import Http2Parser
    from ecapture.parsers.messages import ProtocolError, RawData

    parser = Http2Parser()
    parser.feed("client", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", 1)
    out = parser.gap("client", 4096, 2)
    assert [type(m) for m in out] == [ProtocolError, RawData]
    assert parser.feed("client", b"\x00\x00\x00", 3) == [RawData("client", b"\x00\x00\x00", 3)]

"""From TLS data events to conversations: per process and connection, each side's bytes in
order, handed to the protocol parser the first bytes call for, and paired into exchanges.

Pure and deterministic: time here is the kernel's event time, never the wall clock, so a
replay produces exactly what the live run produced. The one live-only input is
:meth:`Conversations.tick`, which only releases events held for reordering sooner.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Literal

from ecapture.events import Conn, Event, TlsData
from ecapture.exchanges import FrameNotice, HttpExchange, ProtocolNotice
from ecapture.parsers.detect import detect, may_open_http2_server
from ecapture.parsers.http1 import Http1Parser
from ecapture.parsers.http2 import Http2Parser
from ecapture.parsers.messages import (
    Http2Frame,
    HttpRequest,
    HttpResponse,
    Message,
    ProtocolError,
    RawData,
    Side,
)

DETECT_MAX_EVENTS = 8  # give up on detection after this many events without a verdict
# A conversation still undecided after this long without new data (e.g. a server that
# spoke first and a client that never answered) is shown raw rather than held forever.
IDLE_NS = 5_000_000_000
IDLE_SCAN_NS = 1_000_000_000  # look for idle conversations at most this often


@dataclass
class _Conversation:
    key: tuple[int, int]  # (pid, conn_id): the one tuple that _by_fd points to it with
    first: TlsData
    role: Side | None = None  # what the traced process is on this connection
    protocol: str | None = None  # "http1", "http2", "raw"; None while detecting
    held: list[TlsData] = field(default_factory=list)
    parser: Http1Parser | Http2Parser | None = None
    requests: list[HttpRequest] = field(default_factory=list)  # HTTP/1, in order
    by_stream: dict[int, HttpRequest] = field(default_factory=dict)  # HTTP/2
    informational: dict[int | None, list[HttpResponse]] = field(default_factory=dict)
    last: dict[Side, TlsData] = field(default_factory=dict)
    fds: set[tuple[int, int]] = field(default_factory=set)  # (pid, fd) keys pointing here
    #: the socket of the first event's connection, if it has one (a data event on another
    #: socket with the same SSL object starts a new conversation)
    sock: int | None = None


class Conversations:
    """Feed Conn and TlsData events (others pass through); get exchanges, raw data of
    unknown protocols, notices. ``reorder_ns`` > 0 holds events that long (in event time)
    to put per-CPU perf buffer output back in timestamp order.

    Every method returns the events it releases as a list, in order: one list per call
    rather than a generator per stage, since each event of a capture passes through here.
    """

    def __init__(self, reorder_ns: int = 0):
        self.reorder_ns = reorder_ns
        self._heap: list[tuple[int, int, Event]] = []
        self._seq = itertools.count()
        self._clock = 0
        self._last_scan = 0
        self._convs: dict[tuple[int, int], _Conversation] = {}  # (pid, conn_id) -> conversation
        self._by_fd: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, fd) -> conv key

    # -- ordering ---------------------------------------------------------------------
    def feed_all(self, events: list[Event]) -> list[Event]:
        """feed() each event, in one call: what they release, in order."""
        out: list[Event] = []
        append = out.append
        convs, by_fd = self._convs, self._by_fd
        ordered = self.reorder_ns <= 0
        for ev in events:
            # Fast path for the bulk of a capture whose protocol is unknown: a data event
            # of a conversation already shown raw, whose (pid, fd) already points to it, so
            # that _data would only pass it on. Anything else takes the general path.
            if ordered and type(ev) is TlsData and \
                    ev.timestamp_ns - self._last_scan < IDLE_SCAN_NS:
                conv = convs.get((ev.pid, ev.conn_id))
                if conv is not None and conv.protocol == "raw":
                    conn = ev.conn
                    if (conn is None or conv.sock is None or conn.sock == conv.sock) and \
                            (ev.fd < 0 or by_fd.get((ev.pid, ev.fd)) is conv.key):
                        append(ev)
                        continue
            self._feed(ev, out)
        return out

    def feed(self, event: Event) -> list[Event]:
        out: list[Event] = []
        self._feed(event, out)
        return out

    def _feed(self, event: Event, out: list[Event]) -> None:
        if not event.kernel_time:  # e.g. a lost-events notice: pass it on as it comes
            self._process(event, out)
            return
        ts = event.timestamp_ns
        if ts - self._last_scan >= IDLE_SCAN_NS:
            self._flush_idle(ts, out)
        if self.reorder_ns <= 0:
            self._process(event, out)
            return
        heapq.heappush(self._heap, (ts, next(self._seq), event))
        self._clock = max(self._clock, ts)
        self._release(self._clock - self.reorder_ns, out)

    def tick(self, now_ns: int) -> list[Event]:
        """Live only: at kernel time now_ns, release events held for reordering and flush
        idle undecided conversations, even if no new event comes to move time on."""
        out: list[Event] = []
        self._release(now_ns - self.reorder_ns, out)
        if now_ns - self._last_scan >= IDLE_SCAN_NS:
            self._flush_idle(now_ns, out)
        return out

    def _flush_idle(self, now_ns: int, out: list[Event]) -> None:
        """Show raw what has waited too long for a verdict (at most every IDLE_SCAN_NS)."""
        self._last_scan = now_ns
        for conv in self._convs.values():
            if conv.protocol is None and conv.held and \
                    now_ns - conv.held[-1].timestamp_ns > IDLE_NS:
                conv.protocol, conv.role = "raw", conv.role or "client"
                out += conv.held
                conv.held = []

    def _release(self, upto: int, out: list[Event]) -> None:
        heap = self._heap
        while heap and heap[0][0] <= upto:
            self._process(heapq.heappop(heap)[2], out)

    def finish(self) -> list[Event]:
        out: list[Event] = []
        while self._heap:
            self._process(heapq.heappop(self._heap)[2], out)
        for key in list(self._convs):
            self._close(key, out)
        return out

    # -- connections ------------------------------------------------------------------
    def _process(self, event: Event, out: list[Event]) -> None:
        if isinstance(event, TlsData):
            self._data(event, out)
        elif isinstance(event, Conn):
            old = self._by_fd.pop((event.pid, event.fd), None)
            if old is not None:
                # A close ends the conversation; a new connect/accept on the same fd means
                # the fd was reused: the old conversation is over too.
                self._close(old, out)
            out.append(event)
        else:
            out.append(event)

    def _data(self, ev: TlsData, out: list[Event]) -> None:
        key = (ev.pid, ev.conn_id)
        conv = self._convs.get(key)
        conn = ev.conn
        if conv is not None and conn is not None and conv.sock is not None \
                and conn.sock != conv.sock:
            self._close(key, out)  # the SSL object was freed and reused
            conv = None
        if conv is None:
            conv = self._convs[key] = _Conversation(key, ev)
            if conn is not None:
                conv.sock = conn.sock
                if conn.kind in ("connect", "accept"):
                    conv.role = "client" if conn.kind == "connect" else "server"
        if ev.fd >= 0:
            fd_key = (ev.pid, ev.fd)
            self._by_fd[fd_key] = conv.key
            conv.fds.add(fd_key)
        if conv.protocol is None:
            conv.held.append(ev)
            verdict = self._detect(conv)
            if verdict is None:
                return
            conv.protocol = verdict
            held, conv.held = conv.held, []
            if verdict == "http1":
                conv.parser = Http1Parser()
            elif verdict == "http2":
                conv.parser = Http2Parser()
            for h in held:
                self._to_parser(conv, h, out)
        else:
            self._to_parser(conv, ev, out)

    def _detect(self, conv: _Conversation) -> str | None:
        """Decide the protocol from the client's first bytes, and the process's role where
        connection events did not tell. None: wait for more data (an HTTP/2 server speaks
        first, with SETTINGS, so the server's bytes alone prove nothing)."""
        by_dir: dict[str, bytes] = {}
        for h in conv.held:
            by_dir[h.direction] = by_dir.get(h.direction, b"") + h.data
        if conv.role is not None:
            client_dir = "write" if conv.role == "client" else "read"
            if client_dir in by_dir:
                verdict = detect(by_dir[client_dir])
                if verdict in ("http1", "http2"):
                    return str(verdict)
                if verdict is None:
                    return "raw"
            elif _not_http(by_dir.get("read" if client_dir == "write" else "write", b"")):
                return "raw"  # a server that speaks first, and not HTTP/2's SETTINGS
        else:
            for direction, data in by_dir.items():
                verdict = detect(data)
                if verdict in ("http1", "http2"):
                    sender_is_client = verdict == "http2" or not data.startswith(b"HTTP/")
                    writes_are_client = (direction == "write") == sender_is_client
                    conv.role = "client" if writes_are_client else "server"
                    return str(verdict)
            # Which side is the client is unknown (a connection older than the capture):
            # bytes that are neither HTTP/1 nor an HTTP/2 server's opening SETTINGS are
            # raw at once, rather than held until the other side speaks or time runs out.
            if any(_not_http(d) for d in by_dir.values()):
                conv.role = "client"
                return "raw"
        if len(conv.held) >= DETECT_MAX_EVENTS:
            conv.role = conv.role or "client"
            return "raw"
        return None

    def _side(self, conv: _Conversation, ev: TlsData) -> Side:
        role: Side = conv.role or "client"  # always set once a protocol is chosen
        return role if ev.direction == "write" else _other(role)

    def _to_parser(self, conv: _Conversation, ev: TlsData, out: list[Event]) -> None:
        if conv.parser is None:
            out.append(ev)  # unknown protocol: the event as it came
            return
        side = self._side(conv, ev)
        conv.last[side] = ev
        self._messages(conv, conv.parser.feed(side, ev.data, ev.timestamp_ns), out)
        if ev.total_len > len(ev.data):  # a call short of bytes: its stream has a hole
            self._messages(conv, conv.parser.gap(side, ev.missing, ev.timestamp_ns), out)

    def _close(self, key: tuple[int, int], out: list[Event]) -> None:
        conv = self._convs.pop(key, None)
        if conv is None:
            return
        for fd_key in conv.fds:
            if self._by_fd.get(fd_key) == key:
                del self._by_fd[fd_key]
        if conv.protocol is None:
            out += conv.held  # never decided: show what there was
            return
        if conv.parser is not None:
            self._messages(conv, conv.parser.close(), out)
        for req in conv.requests:
            out.append(self._exchange(conv, req, None))
        for req in conv.by_stream.values():
            out.append(self._exchange(conv, req, None))

    # -- pairing ----------------------------------------------------------------------
    def _messages(self, conv: _Conversation, messages: list[Message], out: list[Event]) -> None:
        first = conv.first
        for msg in messages:
            if isinstance(msg, HttpRequest):
                if msg.stream_id is None:
                    conv.requests.append(msg)
                else:
                    conv.by_stream[msg.stream_id] = msg
            elif isinstance(msg, HttpResponse):
                if msg.informational:
                    conv.informational.setdefault(msg.stream_id, []).append(msg)
                    continue
                if msg.stream_id is None:
                    req = conv.requests.pop(0) if conv.requests else None
                else:
                    req = conv.by_stream.pop(msg.stream_id, None)
                out.append(self._exchange(conv, req, msg))
            elif isinstance(msg, ProtocolError):
                out.append(ProtocolNotice(msg.ts_ns, first.pid, first.tid, first.uid,
                                          first.comm, first.conn, msg))
            elif isinstance(msg, Http2Frame):
                out.append(FrameNotice(msg.ts_ns, first.pid, first.tid, first.uid, first.comm,
                                       first.conn, msg))
            elif isinstance(msg, RawData):
                out.append(self._raw(conv, msg))

    def _exchange(self, conv: _Conversation, req: HttpRequest | None,
                  resp: HttpResponse | None) -> HttpExchange:
        stream = (req or resp).stream_id if (req or resp) else None  # type: ignore[union-attr]
        info = tuple(conv.informational.pop(stream, []))
        protocol: Literal["http1", "http2"] = "http2" if conv.protocol == "http2" else "http1"
        first = conv.first
        msg = req or resp
        return HttpExchange(msg.start_ns if msg else 0, first.pid, first.tid, first.uid,
                            first.comm, protocol, first.conn, req, resp, info,
                            conv.role or "client")

    def _raw(self, conv: _Conversation, raw: RawData) -> TlsData:
        """Bytes a parser handed back: shown like the data event they came from."""
        t = conv.last.get(raw.side, conv.first)
        sent_by_us = raw.side == conv.role
        return TlsData(raw.ts_ns, t.pid, t.tid, t.uid, t.comm, t.fd, t.version,
                       "write" if sent_by_us else "read", t.func, t.conn_id, raw.data,
                       len(raw.data), t.conn, t.place)


def _not_http(data: bytes) -> bool:
    """Bytes from either side that no HTTP parser can start on, whatever comes next."""
    return bool(data) and detect(data) is None and not may_open_http2_server(data)


def _other(side: Side | None) -> Side:
    return "server" if side == "client" else "client"


__all__ = ["Conversations"]

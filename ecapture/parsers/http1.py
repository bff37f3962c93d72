"""HTTP/1.x parser for one observed connection, built on h11.

Layer rule (see :mod:`ecapture.parsers`): sans-IO. Bytes in, messages out; no I/O, no clocks,
no globals. The same bytes fed whole, byte by byte or split anywhere give the same messages, and
bad input never raises: one ProtocolError for that side, then its bytes come back as RawData.

h11 is written for an endpoint, but we watch both directions. So we run two h11 connections: a
SERVER-role one that parses what the client sent (requests) and a CLIENT-role one that parses
what the server sent (responses). Every event one of them parses is mirrored into the other with
``send()`` (the bytes it would write are thrown away), so both state machines know the whole
conversation. That is what lets h11 tell that a response to HEAD has no body, handle 1xx,
``Connection: close``, keep-alive cycles, pipelining (it PAUSEs the next request until the
current response is done) and Upgrade / CONNECT.

Timestamps are tied to stream positions, not to the call that happened to parse the bytes:
``start_ns`` is the ts of the feed that delivered the message's first byte and ``end_ns`` that of
its last byte, so a pipelined request parsed later still carries its own times.
"""

from __future__ import annotations

from bisect import bisect_right

import h11

from ecapture.parsers.content import decode_body
from ecapture.parsers.messages import (
    HttpRequest,
    HttpResponse,
    Message,
    ProtocolError,
    RawData,
    Side,
    missing_reason,
)

# Largest header block we accept. We check it ourselves on the parsed head as well as letting
# h11 check incomplete ones, so the verdict doesn't depend on how the bytes were split.
MAX_HEAD = 64 * 1024
# Content decoding gives up (keeps the wire bytes) past this size: decompression bombs.

_Head = h11.Request | h11.Response | h11.InformationalResponse
_Event = _Head | h11.Data | h11.EndOfMessage | h11.ConnectionClosed


class _Half:
    """One direction: its bytes, the h11 connection parsing them, the message in progress."""

    def __init__(self, side: Side, conn: h11.Connection) -> None:
        self.side: Side = side
        self.conn = conn
        # Our own copy of the bytes from the start of the current message on. h11 consumes
        # lines before validating them, so after an error only this copy still has them.
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        # (offset, ts) where a feed with a new ts began, to give each byte its timestamp.
        self._mark_pos: list[int] = []
        self._mark_ts: list[int] = []
        self.raw = False  # after an error, a protocol switch or the end: bytes go out as RawData
        self.waiting = False  # h11 holds bytes it may parse only after the peer's next move
        self.ended = False  # h11 reported ConnectionClosed; it would repeat that forever
        self.head: _Head | None = None
        self.keep_alive = False  # the last request / final response asked to keep it open
        self.body: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] = []

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def add(self, data: bytes, ts: int) -> None:
        if not self._mark_ts or self._mark_ts[-1] != ts:
            self._mark_pos.append(self.end)
            self._mark_ts.append(ts)
        self.buf += data

    def ts_at(self, pos: int) -> int:
        return self._mark_ts[max(bisect_right(self._mark_pos, pos) - 1, 0)]

    def consumed(self) -> int:
        """Stream offset of the first byte h11 has not consumed yet."""
        return self.end - len(self.conn.trailing_data[0])

    def renew(self) -> None:
        """A fresh h11 connection in the same role, holding the bytes not parsed yet."""
        pending = self.conn.trailing_data[0]
        self.conn = h11.Connection(self.conn.our_role, max_incomplete_event_size=MAX_HEAD)
        if pending:  # b"" would mean end of stream to h11
            self.conn.receive_data(pending)

    def cut(self, pos: int) -> None:
        """Forget the bytes before ``pos`` (a finished message) and start a new message."""
        del self.buf[: pos - self.base]  # deleting a bytearray's front is cheap in CPython
        self.base = pos
        keep = max(bisect_right(self._mark_pos, pos) - 1, 0)
        del self._mark_pos[:keep], self._mark_ts[:keep]
        self.head, self.body, self.trailers = None, [], []

    def take_raw(self) -> list[RawData]:
        """Every byte not reported yet, one RawData per feed timestamp."""
        out: list[RawData] = []
        start = self.base
        for stop in [*(p for p in self._mark_pos if p > self.base), self.end]:
            if stop > start:
                chunk = bytes(self.buf[start - self.base : stop - self.base])
                out.append(RawData(self.side, chunk, self.ts_at(start)))
            start = stop
        self.cut(self.end)
        return out


class Http1Parser:
    """One HTTP/1.x connection seen from the outside; see the module docstring."""

    def __init__(self) -> None:
        limit = MAX_HEAD
        self._client = _Half("client", h11.Connection(h11.SERVER, max_incomplete_event_size=limit))
        self._server = _Half("server", h11.Connection(h11.CLIENT, max_incomplete_event_size=limit))
        self._out: list[Message] = []
        self._now = 0  # ts of the current feed() call, for ProtocolError
        self._fed: _Half | None = None  # the side whose bytes are being parsed
        self._closed = False
        # Whether the client has sent a byte we saw. A server that speaks first answers a
        # request sent before the capture started (a connection older than the capture,
        # or a read already blocked when the probes went in).
        self._client_spoke = False

    def feed(self, side: Side, data: bytes, ts_ns: int) -> list[Message]:
        half = self._client if side == "client" else self._server
        if not data:  # h11 would take b"" for end of stream
            return []
        if half.raw or self._closed:
            return [RawData(side, bytes(data), ts_ns)]
        self._now = ts_ns
        if half is self._client:
            self._client_spoke = True
        half.add(data, ts_ns)
        half.conn.receive_data(bytes(data))
        self._pump(half)
        return self._take()

    def gap(self, side: Side, missing: int, ts_ns: int) -> list[Message]:
        """``missing`` bytes of ``side`` will never come (lost, or the kernel would not
        copy them): its messages cannot be framed past them. Said once; that side's bytes
        from here on come back as RawData."""
        half = self._client if side == "client" else self._server
        if missing <= 0 or half.raw or self._closed:
            return []
        self._now = ts_ns
        self._fail(half, missing_reason(missing))
        return self._take()

    def close(self) -> list[Message]:
        """End of capture: finish what a closed connection finishes (a body delimited by the
        close), report unfinished messages with complete=False and leftovers as RawData."""
        if self._closed:
            return []
        self._pump(None)  # first what either side can do about a raw peer, errors included
        self._closed = True
        for half in (self._client, self._server):
            if not half.raw:
                half.conn.receive_data(b"")
        self._pump(None)
        for half in (self._client, self._server):
            self._fail(half, "end of capture")  # in closed mode: no error, just flush
        return self._take()

    def _take(self) -> list[Message]:
        out, self._out = self._out, []
        return out

    def _peer(self, half: _Half) -> _Half:
        return self._server if half is self._client else self._client

    def _pump(self, fed: _Half | None) -> None:
        # Parsing one side can unblock the other (a request lets its response be framed, a
        # finished response lets a pipelined request through), so loop until nothing moves.
        # The output order must not depend on how the fed bytes were split: so the side not
        # being fed, whose bytes are all in already, moves first, as far as it can, after each
        # event of the fed side. For the same reason, reacting to the peer having gone raw is
        # left to the side being fed (to both at close).
        self._fed = fed
        order = (self._server, self._client) if fed is self._client else (
            self._client, self._server)
        while any(self._step(half) for half in order):
            pass
        for half in (self._client, self._server):
            peer = self._peer(half)
            if fed in (None, half) and half.waiting and half.buf and peer.raw and not half.raw:
                # It needs a move of the peer that we will never see parsed.
                self._fail(half, f"cannot follow the {half.side}: the {peer.side} side is "
                                 "not parseable HTTP/1")

    def _step(self, half: _Half) -> bool:
        """Parse one event of ``half``; False when it can't move now."""
        if half.raw or half.ended:
            return False
        conn = half.conn
        # A response can't be framed before its request is known (HEAD, CONNECT...): wait for
        # it, unless the client side went raw and no request will ever be parsed.
        no_request = self._client.raw and self._fed in (None, half)
        if half is self._server and conn.their_state is h11.IDLE and not no_request:
            if self._client_spoke or not half.buf:
                half.waiting = True
                return False
            # Its request predates what we saw. Framing the response against the client's
            # next request instead would put every later response one request late, and
            # leave the last one unparsed until the connection closes.
            self._missed_request()
            conn = half.conn
        try:
            event = conn.next_event()
        except h11.ProtocolError as exc:
            # 431 is h11's "Receive buffer too long": word it like our own check of MAX_HEAD.
            too_long = exc.error_status_hint == 431
            self._fail(half, "header block too long" if too_long else str(exc))
            return True
        half.waiting = event is h11.PAUSED
        if not isinstance(event, _Event):  # NEED_DATA or PAUSED
            return False
        self._handle(half, event)
        return True

    def _missed_request(self) -> None:
        """Both state machines as if the client had sent a GET we did not see: the
        response then frames as a GET's would, and pairs with no request."""
        self._client_spoke = True
        request = h11.Request(method="GET", target="/", headers=[("Host", "")])
        self._server.conn.send(request)
        self._server.conn.send(h11.EndOfMessage())
        # The client half has no bytes yet: a fresh h11 connection that has read the GET.
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        client.receive_data(b"GET / HTTP/1.1\r\nHost: \r\n\r\n")
        while client.next_event() is not h11.NEED_DATA:
            pass
        self._client.conn = client

    def _handle(self, half: _Half, event: _Event) -> None:
        if isinstance(event, _Head):
            half.head = event
            if not isinstance(event, h11.InformationalResponse):
                half.keep_alive = _keep_alive(event)
            if half.consumed() - half.base > MAX_HEAD:
                self._fail(half, "header block too long")
                return
            # 1xx and a successful CONNECT end with their head; there is no EndOfMessage.
            if isinstance(event, h11.InformationalResponse) or (
                    half.conn.their_state is h11.SWITCHED_PROTOCOL):
                self._finish(half, complete=True)
        elif isinstance(event, h11.Data):
            half.body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            half.trailers = list(event.headers)
            self._finish(half, complete=True)
        else:
            half.ended = True
        self._mirror(half, event)
        self._sync()

    def _mirror(self, half: _Half, event: _Event) -> None:
        peer = self._peer(half)
        if peer.raw:
            return
        try:
            peer.conn.send(_sendable(event))
        except h11.ProtocolError as exc:
            self._fail(peer, f"h11 state out of sync: {exc}")

    def _sync(self) -> None:
        c, s = self._client, self._server
        for half in (c, s):
            # After a switch h11 leaves the bytes alone; they are another protocol now.
            if not half.raw and half.conn.their_state is h11.SWITCHED_PROTOCOL:
                self._out.extend(half.take_raw())
                half.raw = True
        if c.raw or s.raw:
            return
        states = {h.conn.our_state for h in (c, s)} | {h.conn.their_state for h in (c, s)}
        if states == {h11.DONE}:
            c.conn.start_next_cycle()
            s.conn.start_next_cycle()
        elif states <= {h11.DONE, h11.MUST_CLOSE} and c.keep_alive and s.keep_alive:
            # h11 never keeps an HTTP/1.0 connection alive, but "Connection: keep-alive" on
            # both messages does: carry on with fresh h11 connections.
            c.renew()
            s.renew()

    def _fail(self, half: _Half, reason: str) -> None:
        """Give up parsing ``half``: report once, then everything unreported goes out raw."""
        if half.raw:
            return
        if not self._closed:
            self._out.append(ProtocolError(half.side, "http1", reason, self._now))
        elif half.head is not None:
            self._finish(half, complete=False)  # the capture ended inside this message
        self._out.extend(half.take_raw())
        half.raw = True

    def _finish(self, half: _Half, complete: bool) -> None:
        end = half.consumed() if complete else half.end
        head = half.head
        assert head is not None
        fields = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]
        wire = b"".join(half.body)
        body = decode_body(wire, fields, complete)
        fields += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in half.trailers]
        version = head.http_version.decode("latin-1")
        start_ns, end_ns = half.ts_at(half.base), half.ts_at(end - 1)
        message: HttpRequest | HttpResponse
        if isinstance(head, h11.Request):
            host = next((v for n, v in fields if n == "host"), "")
            message = HttpRequest(version, head.method.decode("latin-1"), host,
                                  head.target.decode("latin-1"), tuple(fields), body, len(wire),
                                  start_ns, end_ns, complete=complete)
        else:
            message = HttpResponse(version, head.status_code, head.reason.decode("latin-1"),
                                   tuple(fields), body, len(wire), start_ns, end_ns,
                                   complete=complete,
                                   informational=isinstance(head, h11.InformationalResponse))
        self._out.append(message)
        half.cut(end)


def _keep_alive(head: h11.Request | h11.Response) -> bool:
    tokens = {t.strip().lower() for n, v in head.headers if n == b"connection"
              for t in v.split(b",")}
    return b"close" not in tokens and (head.http_version >= b"1.1" or b"keep-alive" in tokens)


def _sendable(event: _Event) -> _Event:
    """h11 only writes HTTP/1.1, so a 1.0 head is mirrored as 1.1 with the same meaning to the
    state machine: h11 never keeps a 1.0 connection alive, and a 1.1 request needs a Host."""
    if not isinstance(event, _Head) or event.http_version == b"1.1":
        return event
    headers = [*event.headers, (b"connection", b"close")]
    if isinstance(event, h11.Request):
        if all(name != b"host" for name, _ in event.headers):
            headers.append((b"host", b""))
        return h11.Request(method=event.method, target=event.target, headers=headers)
    if isinstance(event, h11.Response):
        return h11.Response(status_code=event.status_code, reason=event.reason, headers=headers)
    return h11.InformationalResponse(status_code=event.status_code, reason=event.reason,
                                     headers=headers)

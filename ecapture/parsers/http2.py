"""HTTP/2 parser for one observed connection (h2 over TLS), built on hyperframe and hpack.

Layer rule (see :mod:`ecapture.parsers`): sans-IO. Bytes in, messages out; no I/O, no clocks,
no globals. The same bytes fed whole, byte by byte or split anywhere give the same messages, and
bad input never raises: one ProtocolError for that side, then its bytes come back as RawData.

We are a passive observer of both directions, so each direction gets its own frame buffer and
its own HPACK decoder: the client's encoder and the server's encoder keep separate dynamic
tables (RFC 7541 §2.2), and every header block must go through its decoder in wire order, even
for streams we no longer report, or the table drifts and every later block decodes wrong.

Timestamps are tied to stream positions: ``start_ns`` is the ts of the feed that delivered the
first byte of the message's first HEADERS frame, ``end_ns`` that of the feed that completed it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    AltSvcFrame,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from ecapture.parsers.content import decode_body
from ecapture.parsers.messages import (
    Http2Frame,
    HttpRequest,
    HttpResponse,
    Message,
    ProtocolError,
    RawData,
    Side,
    missing_reason,
)

_SIDES: tuple[Side, Side] = ("client", "server")  # the order of a stream's halves
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
_HEADER_LEN = 9  # RFC 9113 §4.1
_DEFAULT_MAX_FRAME = 16_384  # initial SETTINGS_MAX_FRAME_SIZE, RFC 9113 §6.5.2
# hpack's default header list cap (64 KiB) is an endpoint's DoS guard; an observer must decode
# whatever the peer accepted, so be far more generous, but still bound header blocks.
_MAX_HEADER_LIST = 16 * 1024 * 1024
# Content decoding gives up (keeps the wire bytes) past this size: decompression bombs.

_FRAME_NAMES = {0x0: "DATA", 0x1: "HEADERS", 0x2: "PRIORITY", 0x3: "RST_STREAM",
                0x4: "SETTINGS", 0x5: "PUSH_PROMISE", 0x6: "PING", 0x7: "GOAWAY",
                0x8: "WINDOW_UPDATE", 0x9: "CONTINUATION", 0xA: "ALTSVC"}
_ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
                "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
                "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
                "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")  # RFC 9113 §7
_SETTING_NAMES = {0x1: "HEADER_TABLE_SIZE", 0x2: "ENABLE_PUSH", 0x3: "MAX_CONCURRENT_STREAMS",
                  0x4: "INITIAL_WINDOW_SIZE", 0x5: "MAX_FRAME_SIZE",
                  0x6: "MAX_HEADER_LIST_SIZE", 0x8: "ENABLE_CONNECT_PROTOCOL",
                  0x9: "NO_RFC7540_PRIORITIES"}


class _Broken(Exception):
    """This direction stops making sense; the message is the ProtocolError reason."""


@dataclass
class _Half:
    """What one side sent on one stream: a request (client) or a response (server)."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    has_headers: bool = False
    body: bytearray = field(default_factory=bytearray)
    body_size: int = 0
    start_ns: int | None = None
    last_ns: int = 0
    done: bool = False


@dataclass
class _Block:
    """A header block being assembled from HEADERS/PUSH_PROMISE + CONTINUATION frames."""

    frame: HeadersFrame | PushPromiseFrame
    fragments: list[bytes]
    start_ns: int
    size: int = 0


class _Direction:
    """One side's byte stream: buffer, frame-level state and the HPACK decoder for its blocks."""

    def __init__(self, side: Side) -> None:
        self.side: Side = side
        self.buf = bytearray()
        self.off = 0  # parse position in buf; consumed bytes are dropped now and then
        self.base = 0  # stream offset of buf[0]
        self.chunks: deque[tuple[int, int]] = deque()  # (stream offset, ts) where feeds began
        self.decoder = hpack.Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self.need_preface = side == "client"
        self.seen_settings = False
        self.max_frame = _DEFAULT_MAX_FRAME  # largest frame the peer said it accepts
        self.unacked: deque[dict[int, int]] = deque()  # our SETTINGS the peer has not ACKed
        self.block: _Block | None = None
        self.broken = False

    def ts_at(self, pos: int) -> int:
        """ts of the feed that delivered stream offset ``pos`` (offsets only move forward)."""
        while len(self.chunks) > 1 and self.chunks[1][0] <= pos:
            self.chunks.popleft()
        return self.chunks[0][1]


class Http2Parser:
    """Follows one HTTP/2 connection; see the module docstring."""

    def __init__(self) -> None:
        self._dirs: dict[Side, _Direction] = {"client": _Direction("client"),
                                              "server": _Direction("server")}
        self._streams: dict[int, tuple[_Half, _Half]] = {}  # id -> (client half, server half)
        self._highest = [0, 0]  # highest stream id seen, by parity (even: pushed, odd: client)

    def feed(self, side: Side, data: bytes, ts_ns: int) -> list[Message]:
        d = self._dirs[side]
        if not data:
            return []
        if d.broken:
            return [RawData(side, bytes(data), ts_ns)]
        d.chunks.append((d.base + len(d.buf), ts_ns))
        d.buf += data
        out: list[Message] = []
        try:
            self._drain(d, ts_ns, out)
        except (_Broken, HyperframeError, hpack.HPACKError) as exc:
            reason = str(exc) if isinstance(exc, _Broken) else f"{type(exc).__name__}: {exc}"
            out += _give_up(d, reason, ts_ns)
        # Drop consumed bytes once they are at least half the buffer: the copy is never
        # longer than what was consumed since the last one, so buffering stays linear.
        if d.off * 2 >= len(d.buf):
            del d.buf[:d.off]
            d.base += d.off
            d.off = 0
        return out

    def gap(self, side: Side, missing: int, ts_ns: int) -> list[Message]:
        """``missing`` bytes of ``side`` will never come (lost, or the kernel would not
        copy them): frames cannot be found past them. Said once; that side's bytes from
        here on come back as RawData."""
        d = self._dirs[side]
        if missing <= 0 or d.broken:
            return []
        return _give_up(d, missing_reason(missing), ts_ns)

    def close(self) -> list[Message]:
        """End of capture: streams still open come out with complete=False."""
        out: list[Message] = []
        for stream_id in sorted(self._streams):
            for side, half in zip(_SIDES, self._streams[stream_id], strict=True):
                if _started(half) and not half.done:
                    out.append(_message(side, stream_id, half, half.last_ns, complete=False))
        self._streams.clear()
        return out

    # -- frames -------------------------------------------------------------------------------

    def _drain(self, d: _Direction, ts: int, out: list[Message]) -> None:
        """Handle every complete frame in d's buffer. d.off moves past a frame only once it
        was handled, so after an error the RawData starts with the frame we could not take."""
        buf = d.buf
        while True:
            avail = len(buf) - d.off
            if d.need_preface:
                n = min(avail, len(PREFACE))
                if buf[d.off:d.off + n] != PREFACE[:n]:
                    raise _Broken("missing client connection preface")
                if n < len(PREFACE):
                    return
                d.off += n
                d.need_preface = False
                continue
            if avail < _HEADER_LEN:
                return
            length = int.from_bytes(buf[d.off:d.off + 3], "big")
            # Both checks run on the 9-byte header alone, so junk is caught as soon as it
            # arrives rather than after waiting for a bogus length worth of bytes.
            if not d.seen_settings:
                if buf[d.off + 3] != 0x4:  # RFC 9113 §3.4: each side opens with SETTINGS
                    raise _Broken("connection does not start with SETTINGS")
                d.seen_settings = True
            if length > d.max_frame:  # RFC 9113 §4.2: FRAME_SIZE_ERROR
                raise _Broken(f"frame too large: {length} > {d.max_frame}")
            if avail < _HEADER_LEN + length:
                return
            raw = memoryview(bytes(buf[d.off:d.off + _HEADER_LEN + length]))
            frame, _ = Frame.parse_frame_header(raw[:_HEADER_LEN])
            frame.parse_body(raw[_HEADER_LEN:])
            self._frame(d, frame, length, d.ts_at(d.base + d.off), ts, out)
            d.off += _HEADER_LEN + length

    def _frame(self, d: _Direction, frame: Frame, length: int, start: int, ts: int,
               out: list[Message]) -> None:
        if d.block is not None:
            # RFC 9113 §6.10: a header block is contiguous; only CONTINUATION on the same
            # stream may follow until END_HEADERS.
            if not isinstance(frame, ContinuationFrame) or \
                    frame.stream_id != d.block.frame.stream_id:
                raise _Broken("header block interrupted: expected CONTINUATION")
            d.block.fragments.append(frame.data)
            d.block.size += len(frame.data)
            if d.block.size > _MAX_HEADER_LIST:  # a CONTINUATION flood must not eat memory
                raise _Broken(f"header block too large: over {_MAX_HEADER_LIST} bytes")
            if "END_HEADERS" in frame.flags:
                self._end_block(d, ts, out)
        elif isinstance(frame, ContinuationFrame):
            raise _Broken("CONTINUATION without a header block")
        elif isinstance(frame, HeadersFrame | PushPromiseFrame):
            d.block = _Block(frame, [frame.data], start, len(frame.data))
            if "END_HEADERS" in frame.flags:
                self._end_block(d, ts, out)
        elif isinstance(frame, DataFrame):
            half = self._half(frame.stream_id, d.side)
            if half is not None and not half.done:
                half.body += frame.data  # hyperframe already stripped the padding
                half.body_size += len(frame.data)
                half.start_ns = start if half.start_ns is None else half.start_ns
                half.last_ns = ts
                if "END_STREAM" in frame.flags:
                    self._finish(frame.stream_id, d.side, half, ts, out)
        else:
            at = len(out)  # the frame goes before any message it ends (RST_STREAM)
            detail = self._control(d, frame, length, ts, out)
            out.insert(at, Http2Frame(d.side, _type_name(frame), frame.stream_id, _flags(frame),
                                      ts, detail))

    def _control(self, d: _Direction, frame: Frame, length: int, ts: int,
                 out: list[Message]) -> str:
        """Act on a frame that is neither HEADERS, DATA nor CONTINUATION; return its detail."""
        peer = self._dirs["server" if d.side == "client" else "client"]
        ack = "ack " if "ACK" in frame.flags else ""
        if isinstance(frame, SettingsFrame):
            if ack:
                # RFC 9113 §6.5.3: this side has applied the peer's oldest unacknowledged
                # SETTINGS, so from its next header block on, its encoder may resize its
                # table up to the HEADER_TABLE_SIZE given there, and must shrink to fit it
                # (RFC 7541 §4.2); the decoder for this side's blocks enforces that.
                if peer.unacked:
                    acked = peer.unacked.popleft()
                    if SettingsFrame.HEADER_TABLE_SIZE in acked:
                        d.decoder.max_allowed_table_size = acked[SettingsFrame.HEADER_TABLE_SIZE]
                return "ack"
            d.unacked.append(dict(frame.settings))
            if SettingsFrame.MAX_FRAME_SIZE in frame.settings:
                # Frames the peer sends may grow at once. Never shrink our tolerance: a capture
                # may order the two directions slightly out of causal order.
                peer.max_frame = max(peer.max_frame, frame.settings[SettingsFrame.MAX_FRAME_SIZE])
            return " ".join(f"{_SETTING_NAMES.get(k, hex(k))}={v}"
                            for k, v in frame.settings.items())
        if isinstance(frame, RstStreamFrame):
            # RFC 9113 §6.4: the stream is over; whatever either side had sent is all there is.
            halves = self._streams.pop(frame.stream_id, None)
            if halves is not None:
                for side, half in zip(_SIDES, halves, strict=True):
                    if _started(half) and not half.done:
                        out.append(_message(side, frame.stream_id, half, ts, complete=False))
            return f"error_code={_error_name(frame.error_code)}"
        if isinstance(frame, GoAwayFrame):
            debug = frame.additional_data.decode("utf-8", "replace")
            return (f"last_stream_id={frame.last_stream_id} "
                    f"error_code={_error_name(frame.error_code)}"
                    + (f" debug={debug!r}" if debug else ""))
        if isinstance(frame, PingFrame):
            return f"{ack}opaque={frame.opaque_data.hex()}"
        if isinstance(frame, WindowUpdateFrame):
            return f"increment={frame.window_increment}"
        if isinstance(frame, PriorityFrame):
            return (f"depends_on={frame.depends_on} weight={frame.stream_weight} "
                    f"exclusive={frame.exclusive}")
        if isinstance(frame, AltSvcFrame):
            return f"origin={frame.origin!r} field={frame.field!r}"
        return f"length={length}"

    # -- header blocks and streams ------------------------------------------------------------

    def _end_block(self, d: _Direction, ts: int, out: list[Message]) -> None:
        block, d.block = d.block, None
        assert block is not None
        # Always decode, even for streams we ignore: the dynamic table must see every block.
        headers = [(_text(name).lower(), _text(value)) for name, value
                   in d.decoder.decode(b"".join(block.fragments), raw=True)]
        frame = block.frame
        if isinstance(frame, PushPromiseFrame):
            # RFC 9113 §8.4: the promised request is complete as sent; the pushed response
            # arrives later as HEADERS/DATA on the promised stream.
            promised = self._half(frame.promised_stream_id, "client")
            if promised is not None:
                promised.headers, promised.has_headers, promised.done = headers, True, True
            request = " ".join(_first(headers, k) for k in (":method", ":authority", ":path"))
            out.append(Http2Frame(d.side, "PUSH_PROMISE", frame.stream_id, _flags(frame), ts,
                                  f"promised_stream_id={frame.promised_stream_id} {request}"))
            return
        half = self._half(frame.stream_id, d.side)
        if half is None or half.done:
            return  # closed or reset stream (RFC 9113 §5.1): table updated, nothing to report
        if half.has_headers:
            half.headers += headers  # trailers (RFC 9113 §8.1)
        elif (d.side == "server" and "END_STREAM" not in frame.flags
              and 100 <= _status(headers) < 200):
            # RFC 9113 §8.1: any number of 1xx header sections may precede the final one.
            out.append(HttpResponse("2", _status(headers), "", tuple(headers), b"", 0,
                                    block.start_ns, ts, frame.stream_id, informational=True))
            return
        else:
            half.headers, half.has_headers = headers, True
            half.start_ns = block.start_ns if half.start_ns is None else half.start_ns
        half.last_ns = ts
        if "END_STREAM" in frame.flags:
            self._finish(frame.stream_id, d.side, half, ts, out)

    def _half(self, stream_id: int, side: Side) -> _Half | None:
        """The stream's state for ``side``, opening the stream on first sight; None when the
        stream was closed already (ids only grow, RFC 9113 §5.1.1)."""
        halves = self._streams.get(stream_id)
        if halves is None:
            if stream_id <= self._highest[stream_id % 2]:
                return None
            self._highest[stream_id % 2] = stream_id
            halves = self._streams[stream_id] = (_Half(), _Half())
        return halves[0 if side == "client" else 1]

    def _finish(self, stream_id: int, side: Side, half: _Half, ts: int,
                out: list[Message]) -> None:
        half.done = True
        out.append(_message(side, stream_id, half, ts, complete=True))
        if all(h.done for h in self._streams[stream_id]):
            del self._streams[stream_id]


def _give_up(d: _Direction, reason: str, ts_ns: int) -> list[Message]:
    """Stop parsing direction ``d``: the error, once, then its unparsed bytes as RawData;
    later bytes come back raw as they are fed."""
    out: list[Message] = [ProtocolError(d.side, "http2", reason, ts_ns)]
    if len(d.buf) > d.off:
        out.append(RawData(d.side, bytes(d.buf[d.off:]), ts_ns))
    d.broken, d.block, d.buf, d.off = True, None, bytearray(), 0
    d.chunks.clear()
    return out


def _message(side: Side, stream_id: int, half: _Half, end_ns: int,
             complete: bool) -> HttpRequest | HttpResponse:
    headers = tuple(half.headers)
    body = decode_body(bytes(half.body), half.headers, complete)
    start = end_ns if half.start_ns is None else half.start_ns
    if side == "client":
        return HttpRequest("2", _first(headers, ":method"),
                           _first(headers, ":authority") or _first(headers, "host"),
                           _first(headers, ":path"), headers, body, half.body_size, start,
                           end_ns, stream_id, complete)
    status = _status(headers)
    return HttpResponse("2", status, "", headers, body, half.body_size, start, end_ns,
                        stream_id, complete, informational=100 <= status < 200)


def _started(half: _Half) -> bool:
    return half.has_headers or half.start_ns is not None


def _first(headers: Sequence[tuple[str, str]], name: str) -> str:
    return next((v for n, v in headers if n == name), "")


def _status(headers: Sequence[tuple[str, str]]) -> int:
    status = _first(headers, ":status")
    return int(status) if status.isascii() and status.isdigit() else 0


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _type_name(frame: Frame) -> str:
    if isinstance(frame, ExtensionFrame):
        return f"UNKNOWN(0x{frame.type:02x})"
    return _FRAME_NAMES.get(frame.type or 0, type(frame).__name__)


def _flags(frame: Frame) -> tuple[str, ...]:
    if isinstance(frame, ExtensionFrame):
        return (f"0x{frame.flag_byte:02x}",) if frame.flag_byte else ()
    return tuple(f.name for f in frame.defined_flags if f.name in frame.flags)


def _error_name(code: int) -> str:
    return _ERROR_CODES[code] if code < len(_ERROR_CODES) else hex(code)

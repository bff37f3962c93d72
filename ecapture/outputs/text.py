"""The text model: one block per event, for people reading a terminal.

A block is a header line (wall-clock time, comm, pid/tid, uid, fd, TLS version), a line
with the 4-tuple, direction, length and function, then the payload as text, or as a hex
dump with ``--hex``. Connections and lost events get one line each.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, TextIO

from ecapture.events import Conn, LostNotice, Packet, SslData
from ecapture.parsers.messages import HttpRequest, HttpResponse
from ecapture.streams import FrameNotice, HttpExchange, ProtocolNotice
from ecapture.tlskeys import MasterSecret


def wall_time(monotonic_ns: int, clock_offset_ns: int, tz: dt.tzinfo | None = None) -> str:
    """A kernel CLOCK_MONOTONIC timestamp as wall-clock time, using the recording's
    CLOCK_REALTIME - CLOCK_MONOTONIC offset; local time zone unless ``tz`` is given."""
    ns = monotonic_ns + clock_offset_ns
    when = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz or dt.UTC)
    if tz is None:
        when = when.astimezone()
    when = when.replace(microsecond=(ns // 1000) % 1_000_000)
    return when.isoformat(sep=" ", timespec="microseconds")


# C0 and C1 controls except newline and tab, DEL, and the replacement character that marks
# invalid UTF-8: one regex pass is far faster than testing each character in Python.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def printable(data: bytes) -> str:
    """Payload as text: UTF-8 where valid, control characters other than newline and tab
    shown as '.', CRLF shown as a plain newline."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return _UNPRINTABLE.sub(".", text)


def hexdump(data: bytes, width: int = 16) -> str:
    lines = []
    for off in range(0, len(data), width):
        row = data[off:off + width]
        hexpart = " ".join(f"{b:02x}" for b in row)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:08x}  {hexpart:<{width * 3 - 1}}  |{asc}|")
    return "\n".join(lines)


def format_event(event: Any, clock_offset_ns: int, hex: bool = False,
                 tz: dt.tzinfo | None = None) -> str:
    if isinstance(event, SslData):
        return _format_data(event, clock_offset_ns, hex, tz)
    if isinstance(event, Conn):
        when = wall_time(event.timestamp_ns, clock_offset_ns, tz)
        who = f"{event.comm} pid {event.pid} fd {event.fd}"
        if event.kind == "close":
            return f"{when}  {who}  CLOSE\n"
        if event.kind == "proc":
            return f"{when}  {who}  SOCKET  {event.local} -> {event.remote} (from /proc)\n"
        arrow = f"{event.local} -> {event.remote}" if event.kind == "connect" else \
            f"{event.remote} -> {event.local}"
        return f"{when}  {who}  {event.kind.upper()}  {arrow}\n"
    if isinstance(event, HttpExchange):
        return _format_exchange(event, clock_offset_ns, hex, tz)
    if isinstance(event, ProtocolNotice):
        when = wall_time(event.timestamp_ns, clock_offset_ns, tz)
        err = event.error
        return (f"{when}  {event.comm} pid {event.pid}  {err.protocol} parse error in the "
                f"{err.side}'s data: {err.reason}; its bytes follow raw\n")
    if isinstance(event, FrameNotice):
        when = wall_time(event.timestamp_ns, clock_offset_ns, tz)
        f = event.frame
        extra = f" {f.detail}" if f.detail else ""
        flags = f" [{','.join(f.flags)}]" if f.flags else ""
        return (f"{when}  {event.comm} pid {event.pid}  HTTP/2 {f.type} from {f.side}, "
                f"stream {f.stream_id}{flags}{extra}\n")
    if isinstance(event, MasterSecret | Packet):
        return ""  # secrets and packets go to the keylog and pcap models only
    if isinstance(event, LostNotice):
        when = wall_time(event.recv_ns, clock_offset_ns, tz)
        return f"{when}  LOST {event.count} events on {event.module}/{event.map_name}\n"
    if hasattr(event, "text_line"):  # a module's own event (events.ModuleEvent)
        return f"{wall_time(event.timestamp_ns, clock_offset_ns, tz)}  {event.text_line()}\n"
    return f"{event!r}\n"


def _format_data(ev: SslData, clock_offset_ns: int, hex: bool, tz: dt.tzinfo | None) -> str:
    when = wall_time(ev.timestamp_ns, clock_offset_ns, tz)
    head = (f"--- {when}  {ev.comm}  pid {ev.pid} tid {ev.tid} uid {ev.uid}  fd {ev.fd}  "
            f"{ev.version_name}")
    if ev.conn is not None:
        src, dst = ev.conn.local, ev.conn.remote
        if ev.direction == "read":
            src, dst = dst, src
        tuple_ = f"{src} -> {dst}"
    else:
        tuple_ = "? -> ?"
    what = "WRITE" if ev.direction == "write" else "READ"
    size = f"{len(ev.data)} bytes"
    if ev.missing:
        size += f" ({ev.missing} of {ev.total_len} lost)"
    body = hexdump(ev.data) if hex else printable(ev.data)
    if not body.endswith("\n"):
        body += "\n"
    return f"{head}\n    {tuple_}  {what} {size}  [{ev.func}]\n{body}"


def client_server(conn: Conn | None, role: str) -> tuple[str, str]:
    """The connection's client and server endpoints, whichever side we traced."""
    if conn is None or conn.kind == "close":
        return "?", "?"
    if conn.kind == "connect" or (conn.kind == "proc" and role == "client"):
        return conn.local, conn.remote
    return conn.remote, conn.local


def _format_exchange(ex: HttpExchange, clock_offset_ns: int, hex: bool,
                     tz: dt.tzinfo | None) -> str:
    when = wall_time(ex.timestamp_ns, clock_offset_ns, tz)
    client, server = client_server(ex.conn, ex.role)
    version = "HTTP/2" if ex.protocol == "http2" else \
        f"HTTP/{(ex.request or ex.response).http_version}"  # type: ignore[union-attr]
    stream = f" stream {ex.stream_id}" if ex.stream_id is not None else ""
    latency = f"  {ex.latency_ns / 1e6:.3f} ms" if ex.latency_ns is not None else ""
    lines = [f"=== {when}  {ex.comm}  pid {ex.pid}  {client} -> {server}  "
             f"{version}{stream}{latency}  ({ex.role} side)"]
    if ex.request is not None:
        lines += _message_lines(">", ex.request, hex)
    else:
        lines.append("> (request not captured)")
    for info in ex.informational:
        lines += _message_lines("<", info, hex)
    if ex.response is not None:
        lines += _message_lines("<", ex.response, hex)
    else:
        lines.append("< (no response captured)")
    return "\n".join(lines) + "\n\n"


def _message_lines(mark: str, msg: HttpRequest | HttpResponse, hex: bool) -> list[str]:
    if isinstance(msg, HttpRequest):
        first = f"{mark} {msg.method} {msg.path} HTTP/{msg.http_version}"
    else:
        first = f"{mark} HTTP/{msg.http_version} {msg.status} {msg.reason}".rstrip()
    lines = [first] + [f"{mark} {k}: {v}" for k, v in msg.headers]
    notes = []
    if len(msg.body) != msg.body_size:
        notes.append(f"{msg.body_size} bytes on the wire, {len(msg.body)} decoded")
    if not msg.complete:
        notes.append("incomplete: the capture ended first")
    lines.append(f"{mark}" + (f" ({'; '.join(notes)})" if notes else ""))
    if msg.body:
        body = hexdump(msg.body) if hex else printable(msg.body)
        lines.append(body.rstrip("\n"))
    return lines


class TextOutput:
    def __init__(self, stream: TextIO, clock_offset_ns: int, hex: bool = False,
                 tz: dt.tzinfo | None = None):
        self.stream = stream
        self.clock_offset_ns = clock_offset_ns
        self.hex = hex
        self.tz = tz

    def write(self, event: Any) -> None:
        self.stream.write(format_event(event, self.clock_offset_ns, self.hex, self.tz))

    def close(self) -> None:
        self.stream.flush()

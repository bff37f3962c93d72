"""The events conversations produce: request/response exchanges and notices about a
connection's protocol, each knowing how it looks in the text and json models. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ecapture.events import (
    Conn,
    Event,
    OnConnection,
    endpoints,
    place_fields,
    place_label,
    shown,
)
from ecapture.parsers.messages import Http2Frame, HttpRequest, HttpResponse, ProtocolError, Side
from ecapture.render import Style, json_bytes


def client_server(conn: Conn | None, role: str) -> tuple[str | None, str | None]:
    """The connection's client and server endpoints, whichever side we traced; None where
    unknown."""
    if conn is None or conn.kind == "close":
        return None, None
    if conn.kind == "connect" or (conn.kind == "proc" and role == "client"):
        return conn.local, conn.remote
    return conn.remote, conn.local


def _message_json(msg: HttpRequest | HttpResponse | None) -> dict[str, Any] | None:
    if msg is None:
        return None
    out: dict[str, Any] = {"http_version": msg.http_version}
    if isinstance(msg, HttpRequest):
        out.update(method=msg.method, authority=msg.authority, path=msg.path)
    else:
        out.update(status=msg.status, reason=msg.reason)
    out.update(headers=[[k, v] for k, v in msg.headers], body_size=msg.body_size,
               complete=msg.complete, start_ns=msg.start_ns, end_ns=msg.end_ns,
               **json_bytes("body", msg.body))
    return out


def _message_lines(mark: str, msg: HttpRequest | HttpResponse, style: Style) -> list[str]:
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
        lines.append(style.payload(msg.body).rstrip("\n"))
    return lines


@dataclass(slots=True)
class HttpExchange(OnConnection, Event):
    """A request and its response on one connection. Either may be None: a request still
    unanswered when the capture ended, a response whose request predates the capture. Its
    time is the first byte of the request (or of the response)."""

    protocol: Literal["http1", "http2"]
    conn: Conn | None
    request: HttpRequest | None
    response: HttpResponse | None
    informational: tuple[HttpResponse, ...] = ()
    role: Side = "client"  # what the traced process was on this connection

    json_type: ClassVar[str] = "http"
    @property
    def stream_id(self) -> int | None:
        msg = self.request or self.response
        return msg.stream_id if msg else None

    @property
    def latency_ns(self) -> int | None:
        """From the request's first byte to the response's last byte."""
        if self.request is None or self.response is None:
            return None
        return self.response.end_ns - self.request.start_ns

    def text(self, style: Style) -> str:
        client, server = client_server(self.conn, self.role)
        msg = self.request or self.response
        version = "HTTP/2" if self.protocol == "http2" else \
            f"HTTP/{msg.http_version if msg else '?'}"
        stream = f" stream {self.stream_id}" if self.stream_id is not None else ""
        latency = f"  {self.latency_ns / 1e6:.3f} ms" if self.latency_ns is not None else ""
        lines = [f"=== {style.when(self.timestamp_ns)}  {self.comm}  pid {self.pid}"
                 f"{place_label(self.conn)}  {shown(client)} -> {shown(server)}  {version}"
                 f"{stream}{latency}  ({self.role} side)"]
        if self.request is not None:
            lines += _message_lines(">", self.request, style)
        else:
            lines.append("> (request not captured)")
        for info in self.informational:
            lines += _message_lines("<", info, style)
        if self.response is not None:
            lines += _message_lines("<", self.response, style)
        else:
            lines.append("< (no response captured)")
        return "\n".join(lines) + "\n\n"

    def json_fields(self) -> dict[str, Any]:
        client, server = client_server(self.conn, self.role)
        return {"pid": self.pid, "comm": self.comm, "protocol": self.protocol,
                "role": self.role, "client": client, "server": server,
                **place_fields(self.where), "stream_id": self.stream_id,
                "latency_ns": self.latency_ns, "request": _message_json(self.request),
                "informational": [_message_json(i) for i in self.informational],
                "response": _message_json(self.response)}


@dataclass(slots=True)
class ProtocolNotice(OnConnection, Event):
    """A parser gave up on one side of a connection; its bytes follow as raw data."""

    conn: Conn | None
    error: ProtocolError

    json_type: ClassVar[str] = "protocol_error"

    def text_line(self) -> str:
        err = self.error
        return (f"{self.comm} pid {self.pid}{place_label(self.conn)}  {err.protocol} parse "
                f"error in the {err.side}'s "
                f"data: {err.reason}; its bytes follow raw")

    def json_fields(self) -> dict[str, Any]:
        err = self.error
        return {"pid": self.pid, "comm": self.comm, **endpoints(self.conn),
                **place_fields(self.where), "protocol": err.protocol, "side": err.side,
                "reason": err.reason}


@dataclass(slots=True)
class FrameNotice(OnConnection, Event):
    """An HTTP/2 control frame (SETTINGS, PING, GOAWAY, RST_STREAM, ...)."""

    conn: Conn | None
    frame: Http2Frame

    json_type: ClassVar[str] = "http2_frame"

    def text_line(self) -> str:
        f = self.frame
        extra = f" {f.detail}" if f.detail else ""
        flags = f" [{','.join(f.flags)}]" if f.flags else ""
        return (f"{self.comm} pid {self.pid}{place_label(self.conn)}  HTTP/2 {f.type} from "
                f"{f.side}, "
                f"stream {f.stream_id}{flags}{extra}")

    def json_fields(self) -> dict[str, Any]:
        f = self.frame
        return {"pid": self.pid, "comm": self.comm, **endpoints(self.conn),
                **place_fields(self.where), "side": f.side,
                "frame": f.type, "stream_id": f.stream_id, "flags": list(f.flags),
                "detail": f.detail}

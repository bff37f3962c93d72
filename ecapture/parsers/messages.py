"""What parsers produce. Frozen dataclasses; ``side`` is who sent the bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Side = Literal["client", "server"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    http_version: str  # "1.0", "1.1", "2"
    method: str
    authority: str  # Host header or :authority; "" if absent
    path: str  # request target as sent
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order, pseudo-headers kept
    body: bytes  # after content decoding (gzip, deflate) when the body was encoded
    body_size: int  # bytes of body on the wire, after de-chunking, before content decoding
    start_ns: int  # timestamp of the bytes that began the message
    end_ns: int  # timestamp of the bytes that completed it
    stream_id: int | None = None  # HTTP/2 stream; None for HTTP/1
    complete: bool = True  # False: the connection ended before the message did
    side: Side = "client"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    http_version: str
    status: int
    reason: str  # "" for HTTP/2
    headers: tuple[tuple[str, str], ...]
    body: bytes
    body_size: int
    start_ns: int
    end_ns: int
    stream_id: int | None = None
    complete: bool = True
    informational: bool = False  # 1xx
    side: Side = "server"


#: Why a call's bytes stop short (a chunk lost when the buffer was full, or a read the kernel
#: refused): the words of the parsers' gap() and of the capture's summary.
MISSING_WHY = "lost, or the kernel would not copy them"


def missing_reason(missing: int) -> str:
    """A ProtocolError's reason for a side with ``missing`` bytes that will never come."""
    return f"{missing} bytes missing ({MISSING_WHY})"


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Reported once per side; that side's later bytes come as RawData."""

    side: Side
    protocol: str  # "http1", "http2"
    reason: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class RawData:
    """Bytes no parser understood (unknown protocol, after an error, after an Upgrade)."""

    side: Side
    data: bytes
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Http2Frame:
    """Optional detail for HTTP/2 connections: one frame that is not HEADERS/DATA/
    CONTINUATION (SETTINGS, PING, GOAWAY, RST_STREAM, WINDOW_UPDATE, PRIORITY, PUSH_PROMISE,
    unknown types), for JSON output and debugging."""

    side: Side
    type: str  # "SETTINGS", "PING", ... or "UNKNOWN(0x..)"
    stream_id: int
    flags: tuple[str, ...] = field(default_factory=tuple)
    ts_ns: int = 0
    detail: str = ""  # e.g. "error_code=CANCEL", "last_stream_id=5"


Message = HttpRequest | HttpResponse | ProtocolError | RawData | Http2Frame

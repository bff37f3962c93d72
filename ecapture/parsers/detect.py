"""Which HTTP parser fits a stream, judged from the first bytes one side sent.

Layer rule (see :mod:`ecapture.parsers`): a pure function of bytes, no I/O. It looks at no more
than the first 24 bytes (the length of the HTTP/2 client preface), so a caller never has to
buffer more than that before choosing.
"""

from __future__ import annotations

import re
from typing import Literal

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_SNIFF = len(H2_PREFACE)  # 24

Detected = Literal["http1", "http2", "need_more"] | None

_KNOWN_METHODS = frozenset({
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
    b"REPORT", b"PURGE",
})
# Methods are tokens; real ones are upper case, which keeps plain text ("hello world") out.
_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]*")
_STATUS_PREFIX = b"HTTP/1."


def detect(data: bytes) -> Detected:
    """``"http2"`` for the client preface, ``"http1"`` for a request or status line,
    ``"need_more"`` while a prefix could still be either, ``None`` for anything else."""
    head = bytes(data[:MAX_SNIFF])
    if H2_PREFACE.startswith(head):
        return "http2" if len(head) == len(H2_PREFACE) else "need_more"
    if head.startswith(_STATUS_PREFIX):
        return "http1"
    if _STATUS_PREFIX.startswith(head):
        return "need_more"
    match = _METHOD.match(head)
    if match is None:
        return None
    method, rest = match.group(), head[match.end():]
    if method == b"PRI":  # reserved for the HTTP/2 preface, which this is not
        return None
    if not rest:  # the method may still be growing
        return "need_more" if len(head) < MAX_SNIFF else None
    if rest[:1] != b" ":
        return None
    if method in _KNOWN_METHODS:
        return "http1"
    # An unknown token: also want a plausible request target after the space.
    if len(rest) == 1:
        return "need_more" if len(head) < MAX_SNIFF else None
    return "http1" if 0x21 <= rest[1] <= 0x7E else None


# An HTTP/2 server's first frame is its SETTINGS: 24-bit length (a multiple of 6), type 4,
# flags 0 (ACK is never first), stream 0.
_SETTINGS_HEAD = 9


def may_open_http2_server(data: bytes) -> bool:
    """Whether ``data`` may be the first bytes an HTTP/2 server sends: the one case in
    which a side that is not HTTP/1 is worth waiting on for the other side's bytes."""
    head = bytes(data[:_SETTINGS_HEAD])
    if len(head) >= 4 and head[3] != 0x04:
        return False
    if len(head) >= 5 and head[4] != 0:
        return False
    if len(head) >= 3 and int.from_bytes(head[:3], "big") % 6:
        return False
    return len(head) < _SETTINGS_HEAD or head[5:9] == b"\0\0\0\0"

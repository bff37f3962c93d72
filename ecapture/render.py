"""How events look to people and to JSON readers: wall-clock times, payload text, hex dumps,
bytes in JSON. Pure: no I/O here; events format themselves with these helpers, outputs only
write what the events return.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from json.encoder import encode_basestring
from typing import Any

NS_PER_SEC = 1_000_000_000
MEMO_MAX = 4096  # entries of Style.memo before it is emptied
_DIGITS3 = tuple(f"{n:03d}" for n in range(1000))  # microseconds, three digits at a time

#: Any JSON value as the json model writes it: Python's default separators (", " and ": ")
#: and UTF-8 text rather than \u escapes. One encoder for every line: json.dumps() with
#: options builds a new one per call.
json_text = json.JSONEncoder(ensure_ascii=False).encode
#: A str as a JSON string, exactly as json_text writes it (it is the function json_text
#: itself uses for strings), for events that build their json line directly.
json_str = encode_basestring


def wall_time(monotonic_ns: int, clock_offset_ns: int, tz: dt.tzinfo | None = None) -> str:
    """A kernel CLOCK_MONOTONIC timestamp as wall-clock time, using the recording's
    CLOCK_REALTIME - CLOCK_MONOTONIC offset; local time zone unless ``tz`` is given."""
    ns = monotonic_ns + clock_offset_ns
    when = dt.datetime.fromtimestamp(ns // NS_PER_SEC, tz or dt.UTC)
    if tz is None:
        when = when.astimezone()
    when = when.replace(microsecond=(ns // 1000) % 1_000_000)
    return when.isoformat(sep=" ", timespec="microseconds")


class Style:
    """The choices a user made about presentation, plus the recording's clock offset.

    Formatting a datetime costs microseconds, and events come by the hundred thousand, so the
    text of each wall-clock second is computed once and only the microseconds are filled in;
    the second of the previous call is kept apart, since consecutive events nearly always
    share it. ``memo`` is for events to keep text they would otherwise build again for every
    event (e.g. the fields that one thread's data events on a connection share); each
    event type starts its keys with a name of its own so that they cannot collide, and
    empties it when it reaches MEMO_MAX entries.
    """

    __slots__ = ("_cache", "_hi", "_iso", "_lo", "_tail", "_when", "clock_offset_ns", "hex",
                 "memo", "tz")

    def __init__(self, clock_offset_ns: int = 0, hex: bool = False,
                 tz: dt.tzinfo | None = None):
        self.clock_offset_ns = clock_offset_ns
        self.hex = hex
        self.tz = tz
        self._cache: dict[int, tuple[str, str]] = {}
        self.memo: dict[Any, Any] = {}
        # The last second asked for, in microseconds since the epoch: [_lo, _hi), its text
        # up to the decimal point (with " " and with "T") and the zone after the digits.
        self._lo = self._hi = 0  # none yet
        self._when = self._iso = self._tail = ""

    def _keep_second(self, second: int) -> None:
        """Make a wall-clock second the kept one."""
        parts = self._cache.get(second)
        if parts is None:
            if len(self._cache) > 4096:  # a long capture: keep the cache small
                self._cache.clear()
            text = wall_time(second * NS_PER_SEC - self.clock_offset_ns, self.clock_offset_ns,
                             self.tz)
            # "....:SS.000000+HH:MM": the seconds' text and the zone around the microseconds
            parts = self._cache[second] = (text[:19], text[26:])
        self._lo, self._hi = second * 1_000_000, (second + 1) * 1_000_000
        self._when = f"{parts[0]}."
        self._iso = self._when.replace(" ", "T", 1)
        self._tail = parts[1]

    def when(self, monotonic_ns: int) -> str:
        """Wall-clock time as ``YYYY-MM-DD HH:MM:SS.ffffff+HH:MM``."""
        return self._stamp(monotonic_ns, False)

    def iso(self, monotonic_ns: int) -> str:
        """The same time in ISO 8601 with a ``T``, for JSON."""
        return self._stamp(monotonic_ns, True)

    def _stamp(self, monotonic_ns: int, iso: bool) -> str:
        us = (monotonic_ns + self.clock_offset_ns) // 1000
        if not self._lo <= us < self._hi:
            self._keep_second(us // 1_000_000)
        us -= self._lo
        head = self._iso if iso else self._when
        return f"{head}{_DIGITS3[us // 1000]}{_DIGITS3[us % 1000]}{self._tail}"

    def payload(self, data: bytes) -> str:
        return hexdump(data) if self.hex else printable(data)


# C0 and C1 controls except newline and tab, DEL, and the replacement character that marks
# invalid UTF-8: one regex pass is far faster than testing each character in Python.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


# Bytes that printable() shows as they are, when a payload has nothing else.
_PLAIN = b"\t\n" + bytes(range(0x20, 0x7F))


def printable(data: bytes) -> str:
    """Payload as text: UTF-8 where valid, control characters other than newline and tab
    shown as '.', CRLF shown as a plain newline."""
    if not data.translate(None, _PLAIN):
        # Printable ASCII, newlines and tabs only (most payloads): nothing to replace, and
        # this test costs a fifth of the decode and regex pass below.
        return data.decode("ascii")
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


def json_bytes(prefix: str, data: bytes) -> dict[str, Any]:
    """Bytes in the json model: the text itself when it is UTF-8, else base64, and a
    ``<prefix>_encoding`` field saying which."""
    try:
        return {prefix: data.decode("utf-8"), f"{prefix}_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {prefix: base64.b64encode(data).decode(), f"{prefix}_encoding": "base64"}

"""How events look to people and to JSON readers: wall-clock times, payload text, hex dumps,
bytes in JSON. Pure: no I/O here; events format themselves with these helpers, outputs only
write what the events return.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

NS_PER_SEC = 1_000_000_000


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
    text of each wall-clock second is computed once and only the microseconds are filled in.
    """

    __slots__ = ("_cache", "clock_offset_ns", "hex", "tz")

    def __init__(self, clock_offset_ns: int = 0, hex: bool = False,
                 tz: dt.tzinfo | None = None):
        self.clock_offset_ns = clock_offset_ns
        self.hex = hex
        self.tz = tz
        self._cache: dict[int, tuple[str, str]] = {}

    def when(self, monotonic_ns: int) -> str:
        """Wall-clock time as ``YYYY-MM-DD HH:MM:SS.ffffff+HH:MM``."""
        ns = monotonic_ns + self.clock_offset_ns
        second, rest = divmod(ns, NS_PER_SEC)
        parts = self._cache.get(second)
        if parts is None:
            if len(self._cache) > 4096:  # a long capture: keep the cache small
                self._cache.clear()
            text = wall_time(second * NS_PER_SEC - self.clock_offset_ns, self.clock_offset_ns,
                             self.tz)
            # "....:SS.000000+HH:MM": the seconds' text and the zone around the microseconds
            parts = self._cache[second] = (text[:19], text[26:])
        return f"{parts[0]}.{rest // 1000:06d}{parts[1]}"

    def iso(self, monotonic_ns: int) -> str:
        """The same time in ISO 8601 with a ``T``, for JSON."""
        return self.when(monotonic_ns).replace(" ", "T", 1)

    def payload(self, data: bytes) -> str:
        return hexdump(data) if self.hex else printable(data)


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


def json_bytes(prefix: str, data: bytes) -> dict[str, Any]:
    """Bytes in the json model: the text itself when it is UTF-8, else base64, and a
    ``<prefix>_encoding`` field saying which."""
    try:
        return {prefix: data.decode("utf-8"), f"{prefix}_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {prefix: base64.b64encode(data).decode(), f"{prefix}_encoding": "base64"}

"""The json model: one JSON object per line, for jq and log pipelines.

Field names are stable and documented in docs/json.md; new fields may be added, existing
ones keep their names and meaning. Each event chooses its fields
(:meth:`ecapture.events.Event.json`) and writes its line (``json_line``, the same JSON with
Python's default separators); bytes are text when they are valid UTF-8, else base64, and
``*_encoding`` says which.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TextIO

from ecapture.events import Event
from ecapture.render import Style


class JsonOutput:
    def __init__(self, stream: TextIO, clock_offset_ns: int, tz: dt.tzinfo | None = None):
        self.stream = stream
        self.style = Style(clock_offset_ns, tz=tz)
        self.written = 0
        self._write = stream.write

    def to_dict(self, event: Event) -> dict[str, Any] | None:
        return event.json(self.style)

    def write(self, event: Event) -> None:
        self.write_all([event])

    def write_all(self, events: list[Event]) -> None:
        """write() each event, with one write to the stream (see Pipeline)."""
        style = self.style
        lines = [line for event in events if (line := event.json_line(style)) is not None]
        if lines:
            self.written += len(lines)
            lines.append("")  # the last line's newline
            self._write("\n".join(lines))

    def summary(self) -> str:
        return f"json: {self.written:,} objects written"

    def close(self) -> None:
        self.stream.flush()

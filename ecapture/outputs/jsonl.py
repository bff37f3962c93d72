"""The json model: one JSON object per line, for jq and log pipelines.

Field names are stable and documented in docs/json.md; new fields may be added, existing
ones keep their names and meaning. Each event chooses its fields
(:meth:`ecapture.events.Event.json`); bytes are text when they are valid UTF-8, else base64,
and ``*_encoding`` says which.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, TextIO

from ecapture.events import Event
from ecapture.render import Style

# One encoder for every line: json.dumps() with options builds a new one per call.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


class JsonOutput:
    def __init__(self, stream: TextIO, clock_offset_ns: int, tz: dt.tzinfo | None = None):
        self.stream = stream
        self.style = Style(clock_offset_ns, tz=tz)
        self.written = 0

    def to_dict(self, event: Event) -> dict[str, Any] | None:
        return event.json(self.style)

    def write(self, event: Event) -> None:
        obj = event.json(self.style)
        if obj is not None:
            self.stream.write(_ENCODE(obj) + "\n")
            self.written += 1

    def summary(self) -> str:
        return f"json: {self.written:,} objects written"

    def close(self) -> None:
        self.stream.flush()

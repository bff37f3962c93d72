"""The text model: what people read on a terminal. Each event renders itself (see
:meth:`ecapture.events.Event.text`); this output only writes it.
"""

from __future__ import annotations

import datetime as dt
from typing import TextIO

from ecapture.events import Event
from ecapture.render import Style


class TextOutput:
    def __init__(self, stream: TextIO, clock_offset_ns: int, hex: bool = False,
                 tz: dt.tzinfo | None = None):
        self.stream = stream
        self.style = Style(clock_offset_ns, hex=hex, tz=tz)
        self.shown = 0
        self._write = stream.write

    def write(self, event: Event) -> None:
        self.write_all([event])

    def write_all(self, events: list[Event]) -> None:
        """write() each event, with one write to the stream (see Pipeline)."""
        style = self.style
        texts = [text for event in events if (text := event.text(style))]
        if texts:
            self.shown += len(texts)
            self._write("".join(texts))

    def summary(self) -> str:
        return f"text: {self.shown:,} events shown"

    def close(self) -> None:
        self.stream.flush()

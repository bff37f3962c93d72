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

    def write(self, event: Event) -> None:
        text = event.text(self.style)
        if text:
            self.stream.write(text)
            self.shown += 1

    def summary(self) -> str:
        return f"text: {self.shown:,} events shown"

    def close(self) -> None:
        self.stream.flush()

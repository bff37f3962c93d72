"""Replay a recording into a list of typed events, or into the text a user would see:
the same Reader, bindings and Pipeline as ``ecapture replay``."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

from ecapture.outputs.text import TextOutput
from ecapture.pipeline import Pipeline, bind_from_metadata
from ecapture.record.reader import Reader


class _Collect:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def write(self, event: Any) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def replay_events(path: str | Path) -> list[Any]:
    sink = _Collect()
    with Reader(str(path)) as reader:
        pipeline = Pipeline(bind_from_metadata(reader.metadata), [sink])
        for item in reader:
            pipeline.feed(item)
        pipeline.close()
    return sink.events


def replay_text(path: str | Path, hex: bool = False, tz: dt.tzinfo | None = dt.UTC) -> str:
    """The text model of a recording, in UTC by default so golden files do not depend on
    the machine's time zone."""
    out = io.StringIO()
    with Reader(str(path)) as reader:
        offset = int(reader.metadata.get("clock_offset_ns", 0))
        pipeline = Pipeline(bind_from_metadata(reader.metadata),
                            [TextOutput(out, offset, hex=hex, tz=tz)])
        for item in reader:
            pipeline.feed(item)
        pipeline.close()
    return out.getvalue()

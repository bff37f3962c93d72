"""Replay a recording into a list of typed events, or into the text a user would see:
the same Reader, bindings and Pipeline as ``ecapture replay``."""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ecapture.outputs import make_output
from ecapture.pipeline import Pipeline, bind_from_metadata, reorder_window
from ecapture.record.reader import Reader
from ecapture.streams import Conversations


class Collect:
    """An output that keeps the events it is given."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def write(self, event: Any) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def replay_events(path: str | Path, parsed: bool = False) -> list[Any]:
    """Typed events of a recording: data events as decoded, or with ``parsed`` the
    conversations' output (exchanges, raw data of unknown protocols, notices)."""
    sink = Collect()
    with Reader(str(path)) as reader:
        meta = reader.metadata
        pipeline = Pipeline(bind_from_metadata(meta), [sink],
                            conversations=Conversations(reorder_window(meta)) if parsed
                            else None)
        for item in reader:
            pipeline.feed(item)
        pipeline.close()
    return sink.events


def replay_text(path: str | Path, hex: bool = False, tz: dt.tzinfo | None = dt.UTC,
                model: str = "text", raw: bool = False) -> str:
    """A model's output for a recording, as ``ecapture replay`` prints it; in UTC by
    default so golden files do not depend on the machine's time zone."""
    out = io.StringIO()
    with Reader(str(path)) as reader, tempfile.TemporaryDirectory() as tmp:
        meta = reader.metadata
        offset = int(meta.get("clock_offset_ns", 0))
        keylog = os.path.join(tmp, "keys.log")  # the keylog model writes a file
        output = make_output(model, out, offset, hex=hex, tz=tz, keylogfile=keylog)
        pipeline = Pipeline(bind_from_metadata(meta), [output],
                            conversations=None if raw else Conversations(reorder_window(meta)))
        for item in reader:
            pipeline.feed(item)
        pipeline.close()
        if model == "keylog":
            with open(keylog) as f:
                return f.read()
    return out.getvalue()

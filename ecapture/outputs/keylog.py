"""The keylog model: SSLKEYLOGFILE lines (RFC 9850), each written once and flushed at once,
so Wireshark can read the file while the capture runs."""

from __future__ import annotations

import os

from ecapture.events import Event, KeyLogEntry
from ecapture.privatefile import open_private


class KeylogOutput:
    def __init__(self, path: str):
        self.path = path
        self.lines = 0
        self._seen: set[str] = set()
        self._file = os.fdopen(open_private(path, "key log"), "w", encoding="ascii")

    def write(self, event: Event) -> None:
        if not isinstance(event, KeyLogEntry):
            return
        line = event.line
        if line in self._seen:
            return
        self._seen.add(line)
        self._file.write(f"{line}\n")
        self._file.flush()
        self.lines += 1

    def summary(self) -> str:
        return f"keylog: {self.lines:,} lines written to {self.path}"

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

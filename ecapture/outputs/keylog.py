"""The keylog model: SSLKEYLOGFILE lines (RFC 9850), each written once and flushed at once,
so Wireshark can read the file while the capture runs."""

from __future__ import annotations

import os
from typing import Any

from ecapture.privatefile import open_private
from ecapture.tlskeys import MasterSecret


class KeylogOutput:
    def __init__(self, path: str):
        self.path = path
        self.lines = 0
        self._seen: set[str] = set()
        self._file = os.fdopen(open_private(path, "key log"), "w", encoding="ascii")

    def write(self, event: Any) -> None:
        if not isinstance(event, MasterSecret):
            return
        new = [line for line in event.keylog_lines() if line not in self._seen]
        if not new:
            return
        self._seen.update(new)
        self._file.write("".join(f"{line}\n" for line in new))
        self._file.flush()
        self.lines += len(new)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

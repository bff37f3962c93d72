"""Outputs: formatters are pure (event -> text); a sink writes to the stream it was given.

Every output implements :class:`Output`. They receive the same events live and in replay,
so a replay prints exactly what the live run printed.
"""

from __future__ import annotations

from typing import Any, Protocol


class Output(Protocol):
    def write(self, event: Any) -> None: ...

    def close(self) -> None: ...

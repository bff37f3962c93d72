"""Files that hold secrets (recordings, key logs, pcapng with keys): created or truncated,
readable by their owner only."""

from __future__ import annotations

import os

from ecapture.errors import RecordWriteError


def open_private(path: str, what: str) -> int:
    """An fd open for writing on ``path``, truncated, mode 0600; ``what`` names the file in
    the one-line error ("recording", "key log", ...)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise RecordWriteError(f"cannot create {what} {path}: {e.strerror or e}") from e
    try:
        # The mode argument only applies to new files; an existing one keeps its mode.
        os.fchmod(fd, 0o600)
    except OSError as e:
        os.close(fd)
        raise RecordWriteError(f"cannot restrict {path} to mode 0600: {e.strerror or e}") from e
    return fd

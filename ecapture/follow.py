"""A recording that is still being written, read as if it were a plain file.

Live capture runs its output as a replay of the recording the capture is writing (its own
``--record`` file, or a spool file): a separate process, so that decoding and printing
never compete with draining the kernel's buffers. :class:`GrowingFile` makes that
recording look like an ordinary file to :class:`ecapture.record.reader.Reader`: a read at
its current end waits until the writer adds more, and returns end-of-file only once the
writer says it is done. Each time it has caught up with the writer it calls ``caught_up``
(the output flushes what it printed: a pipe or a file shows it now, not once some KiB have
gathered), and while it waits it calls ``idle`` so that the pipeline can release what it
holds back for ordering.

The writer signals over a pipe: one byte (any) after each batch it writes, and closing its
end when it is done (or when it dies). No other I/O here.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable

WAIT_S = 0.1  # also how often ``idle`` runs while nothing comes


class GrowingFile:
    """``read()`` over file descriptor ``fd`` that waits at the end for the writer."""

    def __init__(self, fd: int, notify_fd: int, idle: Callable[[int], None] | None = None,
                 caught_up: Callable[[], None] | None = None):
        self.fd = fd
        self.notify_fd = notify_fd
        self.idle = idle  # called with CLOCK_MONOTONIC ns while waiting
        self.caught_up = caught_up  # called at the file's end, before waiting
        self.name = f"<recording being written, fd {fd}>"
        self._writer_done = False
        self._poller = select.poll()
        self._poller.register(notify_fd, select.POLLIN)

    def read(self, n: int = -1) -> bytes:
        size = n if n > 0 else 1 << 20
        while True:
            data = os.read(self.fd, size)
            if data or self._writer_done:
                return data
            self._wait()

    def _wait(self) -> None:
        if self.caught_up is not None:
            self.caught_up()
        if self._poller.poll(int(WAIT_S * 1000)):
            try:
                signal = os.read(self.notify_fd, 4096)
            except BlockingIOError:
                signal = b"x"
            if not signal:
                # The writer closed its end: whatever it wrote is in the file now. Read on
                # until the file's end, then report end-of-file.
                self._writer_done = True
                return
        if self.idle is not None:
            self.idle(time.monotonic_ns())

    def close(self) -> None:
        for fd in (self.fd, self.notify_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

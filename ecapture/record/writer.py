"""Append Record, Lost and Fact items to a new .ecap file.

Layer rule: pure framing over one file descriptor; no decoding of payloads. The caller owns
the policy of when to flush (the live layer flushes after every poll batch, so a kill -9
loses at most the batch in hand; the reader copes with the cut frame).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from ecapture.errors import RecordWriteError
from ecapture.privatefile import open_private
from ecapture.record import Fact, Item, Lost, Record
from ecapture.record.format import LOST_CODEC, FrameKind, encode_frame, encode_header

# Flush on our own once this much is buffered, so that a caller that never flushes does not
# grow memory without bound.
_FLUSH_AT = 1024 * 1024


class Writer:
    """Writes a recording: ``Writer(path, metadata)``, ``write(item)``..., ``close()``.

    The file is created mode 0600 because recordings hold plaintext secrets. Exiting a
    ``with`` block through an exception closes without the END marker, so the recording
    says it did not end cleanly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, Any],
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        fd: int | None = None,
    ) -> None:
        """``fd``: write to this open file instead of creating ``path`` (which then only
        names it in messages); the Writer closes it."""
        self.path = os.fspath(path)
        self.size = 0  # bytes handed to the OS so far
        self._clock = clock  # injectable so fixtures are byte-for-byte reproducible
        self._buf = bytearray()
        self._events: Counter[int] = Counter()
        self._bytes: Counter[int] = Counter()
        self._lost: Counter[int] = Counter()
        self._facts = 0
        self._closed = False
        self._failed = False
        # Serialize first: unserializable metadata must not leave an empty file behind.
        meta = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False).encode()
        header = encode_header(meta)
        self._fd = open_private(self.path, "recording") if fd is None else fd
        self._buf += header
        self.flush()

    @property
    def events(self) -> Mapping[int, int]:
        """Events written so far, per map_id."""
        return self._events

    @property
    def bytes(self) -> Mapping[int, int]:
        """Event payload bytes written so far, per map_id."""
        return self._bytes

    @property
    def facts(self) -> int:
        """Facts (what the live layer learned from the system) written so far."""
        return self._facts

    @property
    def lost(self) -> Mapping[int, int]:
        """Events reported lost so far, per map_id."""
        return self._lost

    def write(self, item: Item) -> None:
        """Append one frame (buffered). Raises ValueError for a field out of range."""
        self._check_usable()
        if isinstance(item, Record):
            self._buf += encode_frame(
                FrameKind.EVENT, item.map_id, item.cpu, item.recv_ns, item.data
            )
            self._events[item.map_id] += 1
            self._bytes[item.map_id] += len(item.data)
        elif isinstance(item, Fact):
            body = {"what": item.what, **item.fields}
            payload = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
            self._buf += encode_frame(FrameKind.FACT, item.map_id, 0, item.recv_ns, payload)
            self._facts += 1
        elif isinstance(item, Lost):
            if not 0 <= item.count < 2**64:
                raise ValueError(f"lost count out of range: {item.count}")
            payload = LOST_CODEC.pack(item.count)
            self._buf += encode_frame(FrameKind.LOST, item.map_id, item.cpu, item.recv_ns, payload)
            self._lost[item.map_id] += item.count
        else:
            raise TypeError(f"expected Record, Lost or Fact, got {type(item).__name__}")
        if len(self._buf) >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Hand everything buffered to the OS (no fsync: this is about crashes, not power)."""
        self._check_usable()
        # Snapshot to immutable bytes: the buffer can then be cleared even if a failing
        # write left a view of it alive in a traceback.
        data = bytes(self._buf)
        self._buf.clear()
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:] if done else data)
            self.size += done
        except OSError as e:
            # Whatever reached the file is whole frames plus at most one cut frame, which
            # the reader reports as a truncated tail; further writes would only add damage.
            self._failed = True
            raise RecordWriteError(f"cannot write recording {self.path}: {_why(e)}") from e

    def close(self, summary_extra: Mapping[str, Any] | None = None) -> None:
        """Write the END frame with the summary, flush and close. Safe to call twice."""
        if self._closed:
            return
        try:
            if not self._failed:
                summary = dict(summary_extra or {})
                # Our counts go last so that the summary always tells the truth about them.
                summary["events"] = {str(k): v for k, v in sorted(self._events.items())}
                summary["bytes"] = {str(k): v for k, v in sorted(self._bytes.items())}
                summary["lost"] = {str(k): v for k, v in sorted(self._lost.items())}
                summary["facts"] = self._facts
                now = self._clock()
                summary["end_monotonic_ns"] = now
                payload = json.dumps(summary, ensure_ascii=False, allow_nan=False).encode()
                self._buf += encode_frame(FrameKind.END, 0, 0, now, payload)
                self.flush()
        finally:
            self._close_fd()

    def abort(self) -> None:
        """Flush what was written and close without an END frame (an unclean ending)."""
        if self._closed:
            return
        try:
            if not self._failed:
                self.flush()
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        self._closed = True
        try:
            os.close(self._fd)
        except OSError as e:
            raise RecordWriteError(f"cannot close recording {self.path}: {_why(e)}") from e

    def _check_usable(self) -> None:
        if self._closed:
            raise RecordWriteError(f"recording {self.path} is already closed")
        if self._failed:
            raise RecordWriteError(f"recording {self.path} stopped after an earlier write error")

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _why(e: OSError) -> str:
    return e.strerror or str(e)

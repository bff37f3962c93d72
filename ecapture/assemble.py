"""Joining what the kernel had to split: chunks of one TLS call, and connections by fd.

Pure state machines fed with decoded events, shared by every TLS module. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from ecapture.events import Conn, SslData


@dataclass(frozen=True, slots=True)
class SslChunk:
    """One chunk as decoded: the call's fields with this chunk's data, plus where the chunk
    belongs (the call's entry time identifies it, ``offset`` places the bytes)."""

    call: SslData
    start_ns: int
    offset: int


@dataclass
class _Partial:
    first: SslData
    parts: list[bytes] = field(default_factory=list)
    next_offset: int = 0


class ChunkJoiner:
    """Joins the chunks of one SSL call (same pid, tid and entry time) into one SslData.

    The kernel emits a call's chunks in order from one program run, so they arrive in order
    on both ring buffers and perf buffers. A chunk that does not continue the call where the
    previous one ended means chunks were lost: the call is released with what arrived and
    ``total_len`` says how much is missing.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], tuple[int, _Partial]] = {}

    def feed(self, piece: SslChunk) -> Iterator[SslData]:
        chunk, start_ns, offset = piece.call, piece.start_ns, piece.offset
        key = (chunk.pid, chunk.tid)
        held = self._open.pop(key, None)
        if held is not None:
            held_start, partial = held
            if held_start == start_ns and offset == partial.next_offset:
                partial.parts.append(chunk.data)
                partial.next_offset += len(chunk.data)
                if partial.next_offset >= chunk.total_len:
                    yield self._release(partial, chunk.timestamp_ns)
                else:
                    self._open[key] = (held_start, partial)
                return
            yield self._release(partial, partial.first.timestamp_ns)
        if offset != 0:
            # The beginning of this call was lost: keep what arrived, flagged as short.
            yield chunk
            return
        if len(chunk.data) >= chunk.total_len:
            yield chunk
            return
        self._open[key] = (start_ns, _Partial(chunk, [chunk.data], len(chunk.data)))

    def finish(self) -> Iterator[SslData]:
        for _, partial in self._open.values():
            yield self._release(partial, partial.first.timestamp_ns)
        self._open.clear()

    @staticmethod
    def _release(partial: _Partial, timestamp_ns: int) -> SslData:
        return replace(partial.first, data=b"".join(partial.parts), timestamp_ns=timestamp_ns)


class ConnTable:
    """Which connection each (pid, fd) currently is. A new connect or accept on a reused fd
    replaces it. A close is remembered with its time rather than forgotten: with perf
    buffers (one per CPU) a thread's last read can arrive after its close when the thread
    moved CPUs in between, and that read still belongs to the connection."""

    def __init__(self) -> None:
        self._by_fd: dict[tuple[int, int], Conn] = {}
        self._closed_at: dict[tuple[int, int], int] = {}

    def update(self, conn: Conn) -> None:
        key = (conn.pid, conn.fd)
        if conn.kind == "close":
            current = self._by_fd.get(key)
            if current is not None and (current.sock == conn.sock or conn.sock == 0):
                self._closed_at[key] = conn.timestamp_ns
        else:
            self._by_fd[key] = conn
            self._closed_at.pop(key, None)

    def lookup(self, pid: int, fd: int, ts_ns: int | None = None) -> Conn | None:
        """The connection of (pid, fd) at time ts_ns (an event's kernel time): one closed
        before then is gone; without a time, only an open one counts."""
        key = (pid, fd)
        closed = self._closed_at.get(key)
        if closed is not None and (ts_ns is None or ts_ns > closed):
            return None
        return self._by_fd.get(key)

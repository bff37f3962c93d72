"""Joining what the kernel had to split: chunks of one TLS call, pieces of one packet, and
connections by fd. Pure state machines fed with decoded fragments, shared by every TLS
library module. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ecapture.events import Conn, Fragment


@dataclass(slots=True)
class TlsChunk(Fragment):
    """One chunk of one TLS read or write call, as the kernel sent it: the call's fields,
    this chunk's bytes, and where they belong (``start_ns``, the call's entry time,
    identifies the call; ``offset`` places the bytes)."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    fd: int
    version: int
    direction: Literal["read", "write"]
    func: str
    conn_id: int
    total_len: int
    start_ns: int
    offset: int
    data: bytes


#: A joined call: its first chunk (the call's fields), all its bytes, and its time.
Call = tuple[TlsChunk, bytes, int]


class ChunkJoiner:
    """Joins the chunks of one call (same pid, tid and entry time).

    The kernel emits a call's chunks in order from one program run, so they arrive in order
    on both ring buffers and perf buffers. A chunk that does not continue the call where the
    previous one ended means chunks were lost: the call is released with what arrived and
    its ``total_len`` says how much is missing.
    """

    def __init__(self) -> None:
        #: the calls being joined: (pid, tid) -> (first chunk, parts, next offset)
        self.open: dict[tuple[int, int], tuple[TlsChunk, list[bytes], int]] = {}

    def feed(self, chunk: TlsChunk) -> list[Call]:
        """The calls that this chunk completes or ends, in order: none when it starts a
        call of several chunks or continues one that is still incomplete."""
        key = (chunk.pid, chunk.tid)
        held = self.open.pop(key, None) if self.open else None
        out: list[Call] = []
        if held is not None:
            first, parts, next_offset = held
            if first.start_ns == chunk.start_ns and chunk.offset == next_offset:
                parts.append(chunk.data)
                next_offset += len(chunk.data)
                if next_offset >= chunk.total_len:
                    out.append((first, b"".join(parts), chunk.timestamp_ns))
                else:
                    self.open[key] = (first, parts, next_offset)
                return out
            out.append((first, b"".join(parts), first.timestamp_ns))
        if chunk.offset != 0 or len(chunk.data) >= chunk.total_len:
            # Whole in one chunk; or its beginning was lost: keep what arrived, flagged short.
            out.append((chunk, chunk.data, chunk.timestamp_ns))
            return out
        self.open[key] = (chunk, [chunk.data], len(chunk.data))
        return out

    def end(self, pid: int, tid: int) -> list[Call]:
        """A call that came whole ends the thread's open call, if any: it is released with
        what arrived (the same as :meth:`feed` with a chunk that does not continue it)."""
        held = self.open.pop((pid, tid), None)
        if held is None:
            return []
        first, parts, _ = held
        return [(first, b"".join(parts), first.timestamp_ns)]

    def finish(self) -> Iterator[Call]:
        for first, parts, _ in self.open.values():
            yield first, b"".join(parts), first.timestamp_ns
        self.open.clear()


@dataclass(slots=True)
class PacketChunk(Fragment):
    """One piece of one packet: the TC program copies large (GSO) packets in pieces."""

    timestamp_ns: int
    ifindex: int
    direction: Literal["ingress", "egress"]
    length: int  # the whole packet
    offset: int
    data: bytes


class PacketJoiner:
    """Joins a packet's pieces. They come from one program run, in order, so a packet is
    complete when its bytes reach its length; a piece of another packet (the same time,
    interface and direction identify one) ends an incomplete one, which is released short."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, int, str], tuple[PacketChunk, list[bytes], int]] = {}

    def feed(self, piece: PacketChunk) -> Iterator[tuple[PacketChunk, bytes]]:
        key = (piece.timestamp_ns, piece.ifindex, piece.direction)
        held = self._open.pop(key, None)
        if held is not None:
            first, parts, next_offset = held
            if piece.offset == next_offset:
                parts.append(piece.data)
                next_offset += len(piece.data)
                if next_offset >= first.length or not piece.data:
                    yield first, b"".join(parts)
                else:
                    self._open[key] = (first, parts, next_offset)
                return
            yield first, b"".join(parts)
        if piece.offset != 0 or len(piece.data) >= piece.length or not piece.data:
            yield piece, piece.data
            return
        self._open[key] = (piece, [piece.data], len(piece.data))

    def finish(self) -> Iterator[tuple[PacketChunk, bytes]]:
        for first, parts, _ in self._open.values():
            yield first, b"".join(parts)
        self._open.clear()


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
        if self._closed_at:
            closed = self._closed_at.get(key)
            if closed is not None and (ts_ns is None or ts_ns > closed):
                return None
        return self._by_fd.get(key)

"""Read Record and Lost items back from a .ecap file, streaming.

Layer rule: pure over a BinaryIO (opened here only when given a path); no decoding of
payloads. Never loads the whole file: a window of about one chunk is kept, plus at most one
frame (bounded by MAX_PAYLOAD).

Damage policy: every frame that validates is returned. A frame that does not is skipped up
to the next sync marker that starts a valid frame (counted in ``status``). A tail that could
be the beginning of a frame is a cut (``status.truncated``), not corruption.
"""

from __future__ import annotations

import itertools
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

from ecapture.errors import RecordFormatError
from ecapture.record import Fact, Item, Lost, Record
from ecapture.record.format import (
    CRC_CODEC,
    FRAME_HEAD_CODEC,
    FRAME_HEAD_SIZE,
    FRAME_OVERHEAD,
    HEADER_FIXED_CODEC,
    HEADER_FIXED_SIZE,
    LOST_CODEC,
    MAGIC,
    MAX_METADATA,
    MAX_PAYLOAD,
    SYNC,
    SYNC_BYTES,
    FrameKind,
)
from ecapture.record.migrate import check_version, migrate

CHUNK = 1024 * 1024
# Items per batch at most. A batch's records, and the events made of them, live until the
# batch is done; past a few hundred objects that survive, Python's cyclic GC (its first
# generation is collected every 700 allocations) walks them again and again and costs
# more than reading them does.
BATCH_MAX = 256

_EVENT, _LOST, _END = int(FrameKind.EVENT), int(FrameKind.LOST), int(FrameKind.END)
_FACT = int(FrameKind.FACT)
_KINDS = frozenset(int(k) for k in FrameKind)
# Verdicts on "is there a frame at this offset?"
_VALID, _BAD, _SHORT = 0, 1, 2  # _SHORT: it might be one, but the file ends first
_Head = tuple[int, int, int, int, int, int, int]
CRC_SIZE = CRC_CODEC.size
# CRC-32 of any bytes followed by their own CRC-32 (little-endian): the same for all, and
# only the right CRC gives it. So one crc32() over a frame from its kind through its CRC
# checks it, without unpacking the CRC that the frame carries.
_CRC_RESIDUE = zlib.crc32(zlib.crc32(b"").to_bytes(CRC_SIZE, "little"))

@dataclass
class ReadStatus:
    """How the frames so far ended and what was skipped; final once iteration is done."""

    clean_end: bool = False  # an END frame was read
    records: int = 0  # complete records handed on (events, lost counts and facts)
    truncated: bool = False  # the file ends inside a frame (a cut write)
    truncated_bytes: int = 0  # length of that partial frame
    corrupt_frames: int = 0  # damaged stretches skipped (each counted once)
    skipped_bytes: int = 0  # bytes skipped as damaged, including anything after END
    summary: dict[str, Any] | None = None  # the END frame's JSON

    @property
    def damaged(self) -> bool:
        """Whether the file is not what a clean close leaves: no END frame (the writer was
        killed, crashed, or is still writing; a cut frame implies this), or damage skipped."""
        return not self.clean_end or bool(self.corrupt_frames)


class _Window:
    """A sliding window over a stream, addressed by absolute file offsets.

    ``data`` holds the bytes from ``base``; a refill may drop the bytes before ``keep``.
    """

    __slots__ = ("_src", "base", "data", "eof", "keep", "view")

    def __init__(self, src: BinaryIO, base: int) -> None:
        self._src = src
        self.base = self.keep = base
        self.data = b""
        self.view = memoryview(self.data)  # bytes are immutable, so a view is always safe
        self.eof = False

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def have(self, end: int) -> bool:
        """Whether the window reaches ``end``, reading more if needed."""
        if end <= self.base + len(self.data):
            return True
        while not self.eof and end > self.base + len(self.data):
            chunk = self._src.read(max(CHUNK, end - self.base - len(self.data)))
            if not chunk:
                self.eof = True
                break
            self.data = self.data[self.keep - self.base :] + chunk
            self.base = self.keep
        self.view = memoryview(self.data)
        return end <= self.base + len(self.data)


def _probe(w: _Window, off: int) -> tuple[int, int, _Head | None]:
    """(verdict, frame length, head fields) of a frame supposed to start at ``off``."""
    if not w.have(off + FRAME_HEAD_SIZE):
        return _SHORT, 0, None
    head: _Head = FRAME_HEAD_CODEC.unpack_from(w.data, off - w.base)
    sync, kind, reserved, _, _, _, length = head
    if sync != SYNC or reserved or kind not in _KINDS or length > MAX_PAYLOAD:
        return _BAD, 0, None
    total = FRAME_OVERHEAD + length
    if not w.have(off + total):
        return _SHORT, total, None
    start = off - w.base  # have() may have moved the window
    crc_at = start + total - CRC_CODEC.size
    if zlib.crc32(w.view[start + 4 : crc_at]) != CRC_CODEC.unpack_from(w.data, crc_at)[0]:
        return _BAD, total, None
    return _VALID, total, head


def _resync(w: _Window, off: int, verdict: int) -> tuple[int | None, int | None]:
    """After a bad or short frame at ``off``: (next valid frame, first possible cut frame).

    A short frame means the window already holds everything up to the end of the file.
    Otherwise the scanned bytes are released as we go, so junk cannot fill memory.
    """
    short_at = off if verdict == _SHORT else None
    pos = off + 1
    while True:
        found = w.data.find(SYNC_BYTES, pos - w.base)
        if found < 0:
            if w.eof:
                break
            # Keep 3 bytes: a sync marker may straddle the refill.
            pos = max(pos, w.end - 3)
            w.keep = pos
            w.have(w.end + 1)
            continue
        cand = w.base + found
        if short_at is None:
            w.keep = cand
        verdict, _, _ = _probe(w, cand)
        if verdict == _VALID:
            return cand, short_at
        if verdict == _SHORT and short_at is None:
            short_at = cand
        pos = cand + 1
    if short_at is None:
        # The last 1-3 bytes may be the start of a sync marker cut by a crash.
        for n in (3, 2, 1):
            if w.end - n > off and w.data.endswith(SYNC_BYTES[:n]):
                return None, w.end - n
    return None, short_at


class Reader:
    """Iterate over a recording: ``for item in Reader(path): ...``; then look at ``status``.

    The header is read and validated on construction (RecordFormatError when it is not a
    readable recording). Iteration streams and can happen once.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO) -> None:
        self.status = ReadStatus()
        self.bytes_read = 0  # file length once iteration is done
        self._iterated = False
        if isinstance(source, (str, os.PathLike)):
            self.name = os.fspath(source)
            try:
                self._file: BinaryIO = open(self.name, "rb", buffering=0)  # noqa: SIM115
            except OSError as e:
                raise RecordFormatError(f"cannot open {self.name}: {e.strerror or e}") from e
            self._owned = True
        else:
            self._file = source
            self.name = str(getattr(source, "name", "<stream>"))
            self._owned = False
        try:
            self.format_version, self.metadata = self._read_header()
        except BaseException:
            self.close()
            raise

    def _fail(self, why: str) -> RecordFormatError:
        return RecordFormatError(f"{self.name}: {why}")

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = self._file.read(n)
            if not chunk:
                break
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _read_header(self) -> tuple[int, dict[str, Any]]:
        fixed = self._read_exact(HEADER_FIXED_SIZE)
        n = min(len(fixed), len(MAGIC))
        if fixed[:n] != MAGIC[:n]:
            raise RecordFormatError(f"{self.name} is not an ecapture recording (bad magic)")
        if len(fixed) < HEADER_FIXED_SIZE:
            raise self._fail("truncated header")
        _, version, flags, length = HEADER_FIXED_CODEC.unpack(fixed)
        # The version goes first: a newer format may lay out the rest differently.
        try:
            check_version(version)
        except RecordFormatError as e:
            raise self._fail(str(e)) from None
        if flags:
            raise self._fail(f"unknown header flags {flags:#06x} (written by a newer ecapture?)")
        if length > MAX_METADATA:
            raise self._fail(f"metadata length {length} is implausible (corrupt header)")
        rest = self._read_exact(length + CRC_CODEC.size)
        if len(rest) < length + CRC_CODEC.size:
            raise self._fail("truncated header")
        raw = rest[:length]
        if zlib.crc32(raw) != CRC_CODEC.unpack_from(rest, length)[0]:
            raise self._fail("metadata checksum mismatch (corrupt header)")
        try:
            metadata = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise self._fail(f"metadata is not valid JSON ({e})") from None
        if not isinstance(metadata, dict):
            raise self._fail("metadata is not a JSON object")
        self._data_start = HEADER_FIXED_SIZE + len(rest)
        try:
            return version, migrate(version, metadata)
        except RecordFormatError as e:
            raise self._fail(str(e)) from None

    def __iter__(self) -> Iterator[Item]:
        return itertools.chain.from_iterable(self.batches())

    def batches(self) -> Iterator[list[Item]]:
        """The items in batches of at most BATCH_MAX; a batch also ends before every read
        of the file, so that a reader of a file still being written hands on all it has
        before it waits for more. Like iteration, this can happen once."""
        if self._iterated:
            raise RuntimeError("a Reader can be iterated only once")
        self._iterated = True
        return self._batches()

    def _batches(self) -> Iterator[list[Item]]:
        w = _Window(self._file, self._data_start)
        st = self.status
        try:
            # Counted here, once per batch, so that the hot path stays as it is.
            for batch in self._frames(w):
                st.records += len(batch)
                yield batch
        except OSError as e:
            raise self._fail(f"read error: {e.strerror or e}") from e
        self.bytes_read = w.end

    def _frames(self, w: _Window) -> Iterator[list[Item]]:
        st = self.status
        off = w.base
        unpack_head = FRAME_HEAD_CODEC.unpack_from
        crc32 = zlib.crc32
        while True:
            # The hot path, inlined: the EVENT frames that the window holds whole and whose
            # checksum is right, without a call per frame. Anything else (another kind, a
            # frame that needs a read, damage) stops it; the general path below handles that
            # one frame, reading and resyncing as needed, and the loop comes back here.
            data, base = w.data, w.base
            size = len(data)
            pos = off - base
            more = True
            while more:
                batch: list[Item] = []
                append = batch.append
                for _ in itertools.repeat(None, BATCH_MAX):
                    if pos + FRAME_OVERHEAD > size:
                        more = False
                        break
                    sync, kind, reserved, map_id, cpu, recv_ns, length = unpack_head(data, pos)
                    crc_at = pos + FRAME_HEAD_SIZE + length
                    end = crc_at + CRC_SIZE
                    if sync != SYNC or kind != _EVENT or reserved or length > MAX_PAYLOAD \
                            or end > size or crc32(data[pos + 4 : end]) != _CRC_RESIDUE:
                        more = False
                        break
                    append(Record(map_id, cpu, recv_ns, data[pos + FRAME_HEAD_SIZE : crc_at]))
                    pos = end
                if batch:
                    yield batch
            off = base + pos
            w.keep = off
            verdict, total, head = _probe(w, off)
            if head is not None:  # a valid frame the hot path left to us
                _, kind, _, map_id, cpu, recv_ns, length = head
                at = off - w.base + FRAME_HEAD_SIZE
                off += total
                if kind == _EVENT:
                    yield [Record(map_id, cpu, recv_ns, w.data[at : at + length])]
                elif kind == _LOST and length == LOST_CODEC.size:
                    yield [Lost(map_id, cpu, recv_ns, LOST_CODEC.unpack_from(w.data, at)[0])]
                elif kind == _FACT and self.format_version >= 2 and \
                        (fact := _fact(map_id, recv_ns, w.data[at : at + length])):
                    yield [fact]
                elif kind == _END:
                    st.clean_end = True
                    st.summary = _summary(w.data[at : at + length])
                    st.skipped_bytes += self._drain(w, off)
                    return
                else:  # checksummed but malformed: a writer bug; skip it
                    st.corrupt_frames += 1
                    st.skipped_bytes += total
                continue
            if verdict == _SHORT and w.eof and off == w.end:
                return  # ends exactly at a frame boundary: no END, but nothing is cut
            nxt, short_at = _resync(w, off, verdict)
            if nxt is not None:
                st.corrupt_frames += 1
                st.skipped_bytes += nxt - off
                off = nxt
                continue
            if short_at != off:  # damage first, then possibly a cut frame
                st.corrupt_frames += 1
                st.skipped_bytes += (w.end if short_at is None else short_at) - off
            if short_at is not None:
                st.truncated = True
                st.truncated_bytes = w.end - short_at
            return

    @staticmethod
    def _drain(w: _Window, off: int) -> int:
        """Read to the end of the file without keeping it; the number of bytes after ``off``."""
        w.keep = w.end
        while w.have(w.end + 1):
            w.keep = w.end
        return w.end - off

    def close(self) -> None:
        """Close the file if the Reader opened it."""
        if self._owned:
            self._file.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _summary(payload: bytes) -> dict[str, Any]:
    try:
        summary = json.loads(payload.decode("utf-8"))
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _fact(map_id: int, recv_ns: int, payload: bytes) -> Fact | None:
    """A FACT frame's JSON; None (counted as a damaged frame) when it is not one."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("what"), str):
        return None
    what = body.pop("what")
    return Fact(map_id, recv_ns, what, body)

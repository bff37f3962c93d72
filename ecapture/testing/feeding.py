"""Feed a scripted conversation to a sans-IO parser, whole or split, and compare the results.

A script is a list of ``(side, bytes)`` chunks in capture order. Chunk ``i`` is fed with
``ts_ns=i``; when a chunk is split, every piece keeps the chunk's ts, so a parser that follows
the layer rule (:mod:`ecapture.parsers`) gives identical messages, timestamps included, however
the chunks are cut. Only two things are normalised away: adjacent RawData of one side are
merged (where a parser gives up can split them differently), and ProtocolError reasons are
blanked: they are diagnostics whose wording may depend on how much input the parser had seen
when it gave up (h11 says "illegal request line" after b"\r" but "no request line received"
after b"\r\n"). Side, protocol and ts of the error must still agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from hypothesis import strategies as st

from ecapture.parsers.messages import Message, ProtocolError, RawData, Side

Script = Sequence[tuple[Side, bytes]]
Piece = tuple[Side, bytes, int]  # side, data, ts_ns
Cuts = Sequence[Sequence[int]]  # per chunk, offsets where to cut it


class StreamParser(Protocol):
    def feed(self, side: Side, data: bytes, ts_ns: int) -> list[Message]: ...

    def close(self) -> list[Message]: ...


def split_script(script: Script, cuts: Cuts | Literal["bytes"] | None = None) -> list[Piece]:
    """Pieces to feed: chunk ``i`` cut at ``cuts[i]`` (offsets, any order, out-of-range and
    duplicates ignored), or byte by byte for ``"bytes"``, or whole for None; ts = chunk index."""
    pieces: list[Piece] = []
    for ts, (side, data) in enumerate(script):
        if cuts is None:
            points: list[int] = []
        elif cuts == "bytes":
            points = list(range(1, len(data)))
        else:
            points = sorted({c for c in (cuts[ts] if ts < len(cuts) else ()) if 0 < c < len(data)})
        start = 0
        for stop in [*points, len(data)]:
            pieces.append((side, data[start:stop], ts))
            start = stop
    return pieces


def feed_all(parser_factory: Callable[[], StreamParser], script: Script,
             splits: Cuts | Literal["bytes"] | None = None) -> list[Message]:
    """Messages of a fresh parser fed ``split_script(script, splits)`` and then closed,
    normalised (see :func:`normalise`)."""
    parser = parser_factory()
    out: list[Message] = []
    for side, data, ts in split_script(script, splits):
        out += parser.feed(side, data, ts)
    out += parser.close()
    return normalise(out)


def normalise(messages: Sequence[Message]) -> list[Message]:
    """Merge adjacent RawData of the same side (keeping the first ts); blank error reasons."""
    out: list[Message] = []
    for msg in messages:
        if isinstance(msg, ProtocolError):
            msg = dataclasses.replace(msg, reason="")
        prev = out[-1] if out else None
        if isinstance(msg, RawData) and isinstance(prev, RawData) and prev.side == msg.side:
            out[-1] = dataclasses.replace(prev, data=prev.data + msg.data)
        else:
            out.append(msg)
    return out


def feed_every_way(parser_factory: Callable[[], StreamParser], script: Script,
                   cuts: Cuts | None = None, byte_by_byte: bool = True) -> list[Message]:
    """Feed ``script`` whole, byte by byte (unless disabled) and cut at ``cuts``; assert that
    all agree and return the (normalised) messages."""
    whole = feed_all(parser_factory, script)
    if byte_by_byte:
        assert feed_all(parser_factory, script, "bytes") == whole, "byte by byte differs"
    if cuts is not None:
        assert feed_all(parser_factory, script, cuts) == whole, f"split at {cuts} differs"
    return whole


def cuts_for(script: Script) -> st.SearchStrategy[list[list[int]]]:
    """Hypothesis strategy: a few cut offsets inside each chunk of ``script``."""
    return st.tuples(*(st.lists(st.integers(1, max(len(data) - 1, 1)), max_size=6)
                       for _, data in script)).map(list)

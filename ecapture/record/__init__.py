"""Raw records and the .ecap recording format.

A :class:`Record` is exactly what one eBPF program handed user space: raw bytes, which map
they came from, the CPU, and when user space received them; a :class:`Lost` counts what the
kernel dropped; a :class:`Fact` is what the live layer learned from the running system.
Nothing here decodes payloads; this package only frames, stores and reads them back. I/O
is limited to the file object the caller hands in.
"""

from dataclasses import dataclass
from typing import Any


# Records are values: made once, never changed. Not frozen, because a frozen dataclass sets
# each field through object.__setattr__, and replay makes hundreds of thousands of these.
@dataclass(slots=True)
class Record:
    """One raw event as delivered by a ring or perf buffer."""

    map_id: int  # index into the recording's metadata["maps"]
    cpu: int  # CPU that produced it (perf buffer) or that polled it (ring buffer)
    recv_ns: int  # CLOCK_MONOTONIC nanoseconds when user space received it
    data: bytes


@dataclass(slots=True)
class Lost:
    """Events the kernel dropped because the buffer was full."""

    map_id: int
    cpu: int
    recv_ns: int
    count: int


@dataclass(slots=True)
class Fact:
    """What the live layer learned from the running system for a module, not from its
    probes (e.g. the 4-tuple of a socket older than the capture, read from /proc): recorded
    as a record of its own kind so that replay needs no live system, and so that a reader
    can tell it from what the kernel sent. ``recv_ns`` is when it was learned."""

    map_id: int
    recv_ns: int
    what: str
    fields: dict[str, Any]


Item = Record | Lost | Fact

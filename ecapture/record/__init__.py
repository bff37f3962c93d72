"""Raw records and the .ecap recording format.

A :class:`Record` is exactly what one eBPF program handed user space: raw bytes, which map
they came from, the CPU, and when user space received them. Nothing here decodes payloads;
this package only frames, stores and reads them back. I/O is limited to the file object the
caller hands in.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    """One raw event as delivered by a ring or perf buffer."""

    map_id: int  # index into the recording's metadata["maps"]
    cpu: int  # CPU that produced it (perf buffer) or that polled it (ring buffer)
    recv_ns: int  # CLOCK_MONOTONIC nanoseconds when user space received it
    data: bytes


@dataclass(frozen=True, slots=True)
class Lost:
    """Events the kernel dropped because the buffer was full."""

    map_id: int
    cpu: int
    recv_ns: int
    count: int

"""The byte layout of a .ecap recording, declared once.

Layer rule: constants, construct declarations and pure byte encoders only; no I/O and no
decoding of event payloads.

A file is a header followed by frames::

    header: MAGIC | u16 version | u16 flags | u32 metadata length | metadata | u32 CRC32(metadata)
    frame:  u32 SYNC | u8 kind | u8 reserved | u16 map_id | u32 cpu | u64 recv_ns
            | u32 payload length | payload | u32 CRC32(kind .. end of payload)

All integers are little-endian. Each frame carries its own sync marker, length and checksum
so that a reader can drop a damaged frame, find the next good one, and tell a cut tail from
corruption. The metadata is a UTF-8 JSON object; the keys the tools read are listed in
:data:`METADATA_KEYS` (all optional for the reader).

The construct declarations are the source of truth; the hot paths use :class:`struct.Struct`
codecs derived from them (checked at import) because construct's interpreter is far too slow
for hundreds of thousands of frames.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Any

import construct as cs

# The PNG trick: a high-bit byte catches 7-bit transports, CR LF catches newline conversion,
# ^Z stops `type` on Windows, and the final LF catches LF -> CR LF.
MAGIC = b"\x89ECAP\r\n\x1a\n"
# Version of this byte layout; bumped only when the layout or metadata meaning changes, never
# with the package version. Older versions are upgraded by record.migrate.
FORMAT_VERSION = 2
# Frame sync marker. As bytes (17 5a ec a3) it contains two non-ASCII bytes and a control
# character, so it is rare in text payloads, which are the bulk of what gets captured.
SYNC = 0xA3EC5A17
SYNC_BYTES = SYNC.to_bytes(4, "little")
# Bounds that a corrupt length field cannot exceed, so it cannot make a reader allocate
# gigabytes. Real events are at most a few hundred KiB.
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_METADATA = 16 * 1024 * 1024


class FrameKind(enum.IntEnum):
    EVENT = 1  # payload: the raw bytes of one event
    LOST = 2  # payload: u64 number of events the kernel dropped
    END = 3  # payload: UTF-8 JSON summary, written only by a clean close
    FACT = 4  # payload: UTF-8 JSON {"what": ..., fields...} (format 2 on)


# Metadata keys written by the live layer and read by `info` (documentation, not enforced).
METADATA_KEYS = {
    "tool": "program name, 'ecapture'",
    "tool_version": "ecapture package version",
    "host": "host name",
    "kernel": "kernel release (uname -r)",
    "machine": "machine (uname -m)",
    "command_line": "argv as a list of strings",
    "clock_offset_ns": "CLOCK_REALTIME - CLOCK_MONOTONIC at start, in ns",
    "modules": "[{'name', 'targets': [{'path', 'version', 'build_id', and for a library "
               "found in use: 'mntns', 'seen_as' (its path in that namespace), "
               "'processes'}], ...}]",
    "maps": "[{'id', 'module', 'name', 'struct', 'fingerprint', ...}], id = Record.map_id",
    "filters": "the pid/uid/... filters in effect",
}

HEADER_FIXED = cs.Struct(
    "magic" / cs.Bytes(len(MAGIC)),
    "version" / cs.Int16ul,
    "flags" / cs.Int16ul,  # no flags are defined; v1 writers write 0
    "metadata_length" / cs.Int32ul,
)
HEADER = cs.Struct(
    *HEADER_FIXED.subcons,
    "metadata" / cs.Bytes(cs.this.metadata_length),
    "metadata_crc" / cs.Int32ul,  # CRC32 of the metadata bytes
)

FRAME_HEAD = cs.Struct(
    "sync" / cs.Int32ul,
    "kind" / cs.Int8ul,
    "reserved" / cs.Int8ul,  # 0; a reader treats anything else as corruption
    "map_id" / cs.Int16ul,
    "cpu" / cs.Int32ul,
    "recv_ns" / cs.Int64ul,
    "length" / cs.Int32ul,
)
FRAME = cs.Struct(
    *FRAME_HEAD.subcons,
    "payload" / cs.Bytes(cs.this.length),
    "crc" / cs.Int32ul,  # CRC32 of every byte from kind to the end of the payload
)
LOST_PAYLOAD = cs.Struct("count" / cs.Int64ul)


def _codec(decl: Any) -> struct.Struct:
    """A struct.Struct equivalent of a construct Struct made only of fixed-size fields."""
    parts = []
    for sub in decl.subcons:
        while isinstance(sub, cs.Renamed):
            sub = sub.subcon
        if isinstance(sub, cs.FormatField):
            parts.append(sub.fmtstr.lstrip("<>=!@"))
        elif isinstance(sub, cs.Bytes) and isinstance(sub.length, int):
            parts.append(f"{sub.length}s")
        else:
            raise TypeError(f"cannot derive a struct format from {sub!r}")
    codec = struct.Struct("<" + "".join(parts))
    # Raised, not asserted, so that python -O keeps the check.
    if codec.size != decl.sizeof():
        raise AssertionError(f"struct {codec.format} disagrees with the declaration")
    return codec


HEADER_FIXED_CODEC = _codec(HEADER_FIXED)
FRAME_HEAD_CODEC = _codec(FRAME_HEAD)
CRC_CODEC = struct.Struct("<I")
LOST_CODEC = _codec(LOST_PAYLOAD)
HEADER_FIXED_SIZE = HEADER_FIXED_CODEC.size  # 17: the magic is 9 bytes
FRAME_HEAD_SIZE = FRAME_HEAD_CODEC.size  # 24
FRAME_OVERHEAD = FRAME_HEAD_SIZE + CRC_CODEC.size  # 28


def encode_header(metadata: bytes, version: int = FORMAT_VERSION, flags: int = 0) -> bytes:
    """The file header around already-serialized metadata (version/flags only for tests)."""
    built: bytes = HEADER.build(
        {
            "magic": MAGIC,
            "version": version,
            "flags": flags,
            "metadata_length": len(metadata),
            "metadata": metadata,
            "metadata_crc": zlib.crc32(metadata),
        }
    )
    return built


def encode_frame(kind: int, map_id: int, cpu: int, recv_ns: int, payload: bytes) -> bytes:
    """One complete frame. Raises ValueError when a field does not fit its width."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD")
    try:
        head = FRAME_HEAD_CODEC.pack(SYNC, kind, 0, map_id, cpu, recv_ns, len(payload))
    except struct.error as e:
        raise ValueError(f"frame field out of range: {e}") from None
    # The CRC skips the sync marker: it is constant and checked on its own.
    crc = zlib.crc32(payload, zlib.crc32(head[4:]))
    return b"".join((head, payload, CRC_CODEC.pack(crc)))

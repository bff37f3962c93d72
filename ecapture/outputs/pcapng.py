"""A pcapng writer (draft-ietf-opsawg-pcapng), pure: it only writes to the stream it is given.

The file it produces is one section: a Section Header Block, one Interface Description Block
per interface (timestamps in nanoseconds, ``if_tsresol`` = 9, no snap length), then any mix of
Decryption Secrets Blocks (TLS key log text, so Wireshark decrypts without a separate key log
file) and Enhanced Packet Blocks. Everything is little-endian. The caller owns the stream:
:meth:`PcapngWriter.flush` flushes it, nothing here closes it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

# Block types.
SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
DSB_TYPE = 0x0000000A

BYTE_ORDER_MAGIC = 0x1A2B3C4D
SECRETS_TYPE_TLS_KEYLOG = 0x544C534B  # "TLSK"

# Option codes.
OPT_ENDOFOPT = 0
IF_NAME = 2
IF_TSRESOL = 9

#: The resolution declared in every IDB: 10^-9 s.
TSRESOL_NANOSECONDS = 9

_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _options(opts: list[bytes]) -> bytes:
    # An options list, when present, ends with opt_endofopt.
    if not opts:
        return b""
    return b"".join(opts) + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    body = _pad4(body)
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Writes one pcapng section to ``stream``.

    ``interfaces`` is a list of ``(name, linktype)``, e.g. ``[("lo", 1)]`` for
    LINKTYPE_ETHERNET; packets name an interface by its index in that list.
    """

    def __init__(self, stream: BinaryIO, interfaces: list[tuple[str, int]]):
        self._stream = stream
        self._n_interfaces = len(interfaces)
        self._secrets_seen: set[str] = set()
        # SHB: byte-order magic, version 1.0, section length -1 (not specified).
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
        stream.write(_block(SHB_TYPE, shb))
        for name, linktype in interfaces:
            if not 0 <= linktype <= 0xFFFF:
                raise ValueError(f"pcapng: linktype {linktype} out of range for {name!r}")
            # LinkType, Reserved, SnapLen 0 (no limit), then options.
            idb = struct.pack("<HHI", linktype, 0, 0) + _options([
                _option(IF_NAME, name.encode("utf-8")),
                _option(IF_TSRESOL, bytes([TSRESOL_NANOSECONDS])),
            ])
            stream.write(_block(IDB_TYPE, idb))

    def add_secrets(self, lines: list[str]) -> None:
        """Write a TLS key log Decryption Secrets Block with the lines not written before.

        Blank lines and lines already written (in this or an earlier call) are dropped; if
        nothing new is left, no block is written.
        """
        new: list[str] = []
        for line in lines:
            line = line.rstrip("\r\n")
            if not line.strip() or line in self._secrets_seen:
                continue
            self._secrets_seen.add(line)
            new.append(line)
        if not new:
            return
        text = "".join(line + "\n" for line in new).encode("utf-8")
        body = struct.pack("<II", SECRETS_TYPE_TLS_KEYLOG, len(text)) + _pad4(text)
        self._stream.write(_block(DSB_TYPE, body))

    def add_packet(self, interface_id: int, timestamp_ns: int, data: bytes,
                   original_len: int | None = None) -> None:
        """Write an Enhanced Packet Block.

        ``timestamp_ns`` is wall-clock time in nanoseconds since the Unix epoch;
        ``original_len`` defaults to ``len(data)`` and may not be smaller than it.
        """
        if not 0 <= interface_id < self._n_interfaces:
            raise ValueError(f"pcapng: no interface {interface_id} "
                             f"(the writer has {self._n_interfaces})")
        if not 0 <= timestamp_ns <= _U64_MAX:
            raise ValueError(f"pcapng: timestamp {timestamp_ns} out of range")
        captured = len(data)
        if original_len is None:
            original_len = captured
        if not captured <= original_len <= _U32_MAX:
            raise ValueError(f"pcapng: original length {original_len} is less than the "
                             f"captured length {captured} or too large")
        body = struct.pack("<IIIII", interface_id, timestamp_ns >> 32,
                           timestamp_ns & _U32_MAX, captured, original_len) + _pad4(bytes(data))
        self._stream.write(_block(EPB_TYPE, body))

    def flush(self) -> None:
        self._stream.flush()

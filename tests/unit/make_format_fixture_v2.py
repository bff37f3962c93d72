"""Write fixtures/recordings/format/v2.ecap, the frozen sample of format version 2.

Version 2 added FACT frames (kind 4): what the live layer learned from the running system,
as UTF-8 JSON with a "what" key. The bytes are spelled out here with struct and zlib,
independently of ecapture.record, so the fixture pins the v2 layout itself. Never change
this script's output once committed: a new format version gets a new script and fixture.

    python tests/unit/make_format_fixture_v2.py
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "recordings" / "format" / "v2.ecap"

METADATA = {
    "tool": "ecapture",
    "tool_version": "0.2.0",
    "host": "fixture-host",
    "kernel": "6.18.0-fixture",
    "machine": "x86_64",
    "command_line": ["ecapture", "tls", "--record", "v2.ecap"],
    "clock_offset_ns": 1_700_000_000_000_000_000,
    "modules": [{"name": "tls", "targets": [{"path": "/usr/lib/libssl.so.3",
                                            "version": "OpenSSL 3.0.2", "build_id": "ab12"}]}],
    "maps": [{"id": 0, "module": "tls", "name": "events"},
             {"id": 1, "module": "tls", "name": "packets"}],
}
FACT = {"what": "socket", "for": "data", "ts_ns": 999, "pid": 42, "tid": 42, "uid": 0,
        "comm": "curl", "fd": 5, "family": 2, "laddr": "7f000001" + "00" * 12, "lport": 40000,
        "raddr": "7f000001" + "00" * 12, "rport": 443}
# (kind, map_id, cpu, recv_ns, payload); kinds: 1 EVENT, 2 LOST, 3 END, 4 FACT
FRAMES = [
    (4, 0, 0, 1_000_000_000, json.dumps(FACT).encode()),
    (1, 0, 0xFFFFFFFF, 1_000_000_000, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
    (1, 1, 3, 1_000_500_000, bytes(range(256))),
    (2, 0, 0xFFFFFFFF, 1_002_000_000, struct.pack("<Q", 7)),
    (
        3,
        0,
        0,
        1_004_000_000,
        json.dumps({"capture": "stopped", "events": {"0": 1, "1": 1},
                    "bytes": {"0": 33, "1": 256}, "lost": {"0": 7}, "facts": 1,
                    "end_monotonic_ns": 1_004_000_000}).encode(),
    ),
]


def build() -> bytes:
    meta = json.dumps(METADATA).encode()
    out = [b"\x89ECAP\r\n\x1a\n", struct.pack("<HHI", 2, 0, len(meta)), meta]
    out.append(struct.pack("<I", zlib.crc32(meta)))
    for kind, map_id, cpu, recv_ns, payload in FRAMES:
        body = struct.pack("<BBHIQI", kind, 0, map_id, cpu, recv_ns, len(payload)) + payload
        out += [struct.pack("<I", 0xA3EC5A17), body, struct.pack("<I", zlib.crc32(body))]
    return b"".join(out)


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_bytes(build())
    print(f"wrote {FIXTURE}")  # noqa: T201

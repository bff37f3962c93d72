"""Write fixtures/recordings/format/v1.ecap, the frozen sample of format version 1.

The bytes are spelled out here with struct and zlib, independently of ecapture.record, so
the fixture pins the v1 layout itself rather than whatever the writer currently does. Never
change this script's output once committed: a new format version gets a new script/fixture.

    python tests/unit/make_format_fixture.py
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "recordings" / "format" / "v1.ecap"

METADATA = {
    "tool": "ecapture",
    "tool_version": "0.1.0",
    "host": "fixture-host",
    "kernel": "6.1.0-fixture",
    "machine": "x86_64",
    "command_line": ["ecapture", "tls", "--record", "v1.ecap"],
    "clock_offset_ns": 1_700_000_000_000_000_000,
    "modules": [
        {
            "name": "openssl",
            "targets": [{"path": "/usr/lib/libssl.so.3", "version": "3.0.2", "build_id": "ab12"}],
        }
    ],
    "maps": [
        {"id": 0, "module": "openssl", "name": "tls_events"},
        {"id": 1, "module": "openssl", "name": "connect_events"},
    ],
}
# (kind, map_id, cpu, recv_ns, payload); kinds: 1 EVENT, 2 LOST, 3 END
FRAMES = [
    (1, 0, 0, 1_000_000_000, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
    (1, 1, 3, 1_000_500_000, bytes(range(256))),
    (1, 0, 1, 1_001_000_000, b""),
    (2, 0, 2, 1_002_000_000, struct.pack("<Q", 7)),
    (1, 0, 0, 1_003_000_000, b"\x17\x5a\xec\xa3 sync marker inside a payload"),
    (
        3,
        0,
        0,
        1_004_000_000,
        b'{"events": {"0": 3, "1": 1}, "lost": {"0": 7}, "end_monotonic_ns": 1004000000}',
    ),
]


def build() -> bytes:
    meta = json.dumps(METADATA).encode()
    out = [b"\x89ECAP\r\n\x1a\n", struct.pack("<HHI", 1, 0, len(meta)), meta]
    out.append(struct.pack("<I", zlib.crc32(meta)))
    for kind, map_id, cpu, recv_ns, payload in FRAMES:
        body = struct.pack("<BBHIQI", kind, 0, map_id, cpu, recv_ns, len(payload)) + payload
        out += [struct.pack("<I", 0xA3EC5A17), body, struct.pack("<I", zlib.crc32(body))]
    return b"".join(out)


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_bytes(build())
    print(f"wrote {FIXTURE}")  # noqa: T201

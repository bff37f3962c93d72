"""Where OpenSSL keeps a connection's secrets, per version. Pure data.

The values are offsets into the object passed to SSL_read/SSL_write (struct ssl_st up to
3.1, struct ssl_connection_st from 3.2) and into SSL_SESSION and SSL_CIPHER, as generated
by compiling each OpenSSL release with offsetof() (upstream eCapture publishes such tables;
see ../shared/reference/ecapture-anatomy.md §5). A version not covered here is refused with
its name rather than read at a guessed place: wrong offsets would give garbage keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyOffsets:
    client_random: int  # s3.client_random (s3 is embedded from 3.0)
    session: int
    session_master_key: int
    session_cipher: int
    cipher_id: int
    handshake_secret: int
    handshake_traffic_hash: int
    client_app_traffic_secret: int
    server_app_traffic_secret: int
    exporter_master_secret: int

    def cflags(self) -> list[str]:
        names = {
            "OFF_CLIENT_RANDOM": self.client_random, "OFF_SESSION": self.session,
            "OFF_SESSION_MASTER_KEY": self.session_master_key,
            "OFF_SESSION_CIPHER": self.session_cipher, "OFF_CIPHER_ID": self.cipher_id,
            "OFF_HANDSHAKE_SECRET": self.handshake_secret,
            "OFF_HANDSHAKE_TRAFFIC_HASH": self.handshake_traffic_hash,
            "OFF_CLIENT_APP_TRAFFIC_SECRET": self.client_app_traffic_secret,
            "OFF_SERVER_APP_TRAFFIC_SECRET": self.server_app_traffic_secret,
            "OFF_EXPORTER_MASTER_SECRET": self.exporter_master_secret,
        }
        return [f"-D{k}=0x{v:x}" for k, v in names.items()]


_V3_0 = KeyOffsets(0x160, 0x918, 0x50, 0x2F8, 0x18, 0x584, 0x704, 0x744, 0x784, 0x7C4)
_V3_0_12 = KeyOffsets(0x160, 0x938, 0x50, 0x2F8, 0x18, 0x584, 0x704, 0x744, 0x784, 0x7C4)
_V3_2_0 = KeyOffsets(0x140, 0x880, 0x50, 0x300, 0x18, 0x53C, 0x6BC, 0x6FC, 0x73C, 0x77C)
_V3_2_3 = KeyOffsets(0x140, 0x880, 0x50, 0x2F8, 0x18, 0x53C, 0x6BC, 0x6FC, 0x73C, 0x77C)
_V3_2_4 = KeyOffsets(0x148, 0x888, 0x50, 0x2F8, 0x18, 0x544, 0x6C4, 0x704, 0x744, 0x784)
_V3_5_0 = KeyOffsets(0x188, 0x900, 0x50, 0x2F8, 0x18, 0x5BC, 0x73C, 0x77C, 0x7BC, 0x7FC)


def key_offsets(version: str | None) -> KeyOffsets | None:
    """Offsets for an OpenSSL version string such as "3.0.22"; None if unknown."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version or "")
    if not m:
        return None
    v = tuple(int(x) for x in m.groups())
    if v == (3, 0, 12):
        return _V3_0_12  # 3.0.12 alone grew ssl_st; 3.0.13 reverted it
    if v[:2] in ((3, 0), (3, 1)):
        return _V3_0
    if v[:2] == (3, 2):
        return _V3_2_0 if v[2] <= 2 else _V3_2_3 if v[2] == 3 else _V3_2_4
    if v[:2] == (3, 3):
        return (_V3_2_0 if v[2] <= 1 else _V3_2_3) if v[2] <= 2 else _V3_2_4
    if v[:2] == (3, 4):
        return _V3_2_3 if v[2] == 0 else _V3_2_4
    if v[:2] in ((3, 5), (3, 6), (4, 0)):
        return _V3_5_0
    return None

"""Where OpenSSL keeps a connection's secrets, per version. Pure data.

The values are offsets into the object passed to SSL_read/SSL_write (struct ssl_st up to
3.1, struct ssl_connection_st from 3.2) and into SSL_SESSION and SSL_CIPHER, as generated
by compiling each OpenSSL release with offsetof() (upstream eCapture publishes such tables).
A version not covered here is refused with its name rather than read at a guessed place:
wrong offsets would give garbage keys. So is a fork that changes ssl_st under the same
number (quictls' "3.0.13+quic"): its layout is not known here.

OpenSSL 1.1.1 releases are told apart by their letter (1.1.1a to 1.1.1w): ssl_st changed
within the series. There, ssl_st holds a pointer to its ssl3_state_st (``s3``), where the
client random is; from 3.0 that state is embedded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyOffsets:
    client_random: int  # ssl3_state_st.client_random: from ssl_st, or from *s3 when s3 is set
    session: int
    session_master_key: int
    session_cipher: int
    cipher_id: int
    handshake_secret: int
    handshake_traffic_hash: int
    client_app_traffic_secret: int
    server_app_traffic_secret: int
    exporter_master_secret: int
    s3: int | None = None  # 1.1.1: offset of the ssl3_state_st pointer in ssl_st

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
        if self.s3 is not None:
            names["OFF_S3"] = self.s3
        return [f"-D{k}=0x{v:x}" for k, v in names.items()]


# 1.1.1: ssl_st.session moved in 1.1.1b and back in 1.1.1d; the TLS 1.3 secrets moved in
# 1.1.1d; SSL_SESSION.cipher moved in 1.1.1j.
_V1_1_1A = KeyOffsets(0xB8, 0x510, 0x50, 0x1F8, 0x18, 0x174, 0x2F4, 0x334, 0x374, 0x3B4, s3=0xA8)
_V1_1_1B = KeyOffsets(0xB8, 0x508, 0x50, 0x1F8, 0x18, 0x174, 0x2F4, 0x334, 0x374, 0x3B4, s3=0xA8)
_V1_1_1D = KeyOffsets(0xB8, 0x510, 0x50, 0x1F8, 0x18, 0x17C, 0x2FC, 0x33C, 0x37C, 0x3BC, s3=0xA8)
_V1_1_1J = KeyOffsets(0xB8, 0x510, 0x50, 0x1F0, 0x18, 0x17C, 0x2FC, 0x33C, 0x37C, 0x3BC, s3=0xA8)

# (first letter, last letter, offsets) of each 1.1.1 range; 1.1.1w was the last release.
V1_1_1_LETTERS = (
    ("a", "a", _V1_1_1A),
    ("b", "c", _V1_1_1B),
    ("d", "i", _V1_1_1D),
    ("j", "w", _V1_1_1J),
)

_V3_0 = KeyOffsets(0x160, 0x918, 0x50, 0x2F8, 0x18, 0x584, 0x704, 0x744, 0x784, 0x7C4)
_V3_0_12 = KeyOffsets(0x160, 0x938, 0x50, 0x2F8, 0x18, 0x584, 0x704, 0x744, 0x784, 0x7C4)
_V3_2_0 = KeyOffsets(0x140, 0x880, 0x50, 0x300, 0x18, 0x53C, 0x6BC, 0x6FC, 0x73C, 0x77C)
_V3_2_3 = KeyOffsets(0x140, 0x880, 0x50, 0x2F8, 0x18, 0x53C, 0x6BC, 0x6FC, 0x73C, 0x77C)
_V3_2_4 = KeyOffsets(0x148, 0x888, 0x50, 0x2F8, 0x18, 0x544, 0x6C4, 0x704, 0x744, 0x784)
_V3_5_0 = KeyOffsets(0x188, 0x900, 0x50, 0x2F8, 0x18, 0x5BC, 0x73C, 0x77C, 0x7BC, 0x7FC)


def key_offsets(version: str | None) -> KeyOffsets | None:
    """Offsets for an OpenSSL version string such as "3.0.22" or "1.1.1w"; None if unknown
    (among them 1.1.1 without a letter, and forks such as "3.0.13+quic")."""
    m = re.fullmatch(r"1\.1\.1([a-z])", version or "")
    if m:
        letter = m.group(1)
        return next((o for first, last, o in V1_1_1_LETTERS if first <= letter <= last), None)
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

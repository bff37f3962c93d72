"""Where GnuTLS keeps a session's secrets, per version. Pure data.

The values are offsets into ``struct gnutls_session_int`` (what a ``gnutls_session_t``
points to), into the ``mac_entry_st`` its PRF points to and into the ``version_entry_st`` of
its negotiated version, as compiling each GnuTLS release with offsetof() gives them
(upstream eCapture publishes such tables for 3.6.12 to 3.8.9). Only the TLS 1.3 secrets
(``key.proto.tls13``, after the large ``internals``) move between releases; the security
parameters at the start of the session do not. The 3.7.7 entry was checked against
GnuTLS 3.7.9 (Debian 12) by finding its own SSLKEYLOGFILE secrets in a live session.

A version not covered here is refused with its name rather than read at a guessed place:
wrong offsets would give garbage keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# security_parameters_st sits at offset 0 of gnutls_session_int in every listed release.
PRF = 0x18  # security_parameters.prf (const mac_entry_st *)
MAC_ID = 0x18  # mac_entry_st.id (gnutls_mac_algorithm_t)
MASTER_SECRET = 0x20  # security_parameters.master_secret[48]
CLIENT_RANDOM = 0x50  # security_parameters.client_random[32]
PVERSION = 0xF8  # security_parameters.pversion (const version_entry_st *)
VERSION_ID = 0x8  # version_entry_st.id (gnutls_protocol_t)


@dataclass(frozen=True)
class SessionOffsets:
    """Offsets of ``key.proto.tls13``'s secrets in gnutls_session_int; the rest are the
    module constants above."""

    e_ckey: int  # client_early_traffic_secret
    hs_ckey: int  # client_handshake_traffic_secret
    hs_skey: int  # server_handshake_traffic_secret
    ap_ckey: int  # client_application_traffic_secret_0
    ap_skey: int  # server_application_traffic_secret_0
    ap_expkey: int  # exporter_master_secret

    def cflags(self) -> list[str]:
        names = {
            "GNUTLS_OFF_PRF": PRF, "GNUTLS_OFF_MAC_ID": MAC_ID,
            "GNUTLS_OFF_MASTER_SECRET": MASTER_SECRET,
            "GNUTLS_OFF_CLIENT_RANDOM": CLIENT_RANDOM,
            "GNUTLS_OFF_PVERSION": PVERSION, "GNUTLS_OFF_VERSION_ID": VERSION_ID,
            "GNUTLS_OFF_E_CKEY": self.e_ckey, "GNUTLS_OFF_HS_CKEY": self.hs_ckey,
            "GNUTLS_OFF_HS_SKEY": self.hs_skey, "GNUTLS_OFF_AP_CKEY": self.ap_ckey,
            "GNUTLS_OFF_AP_SKEY": self.ap_skey, "GNUTLS_OFF_AP_EXPKEY": self.ap_expkey,
        }
        return [f"-D{k}=0x{v:x}" for k, v in names.items()]


_V3_6_12 = SessionOffsets(0x1494, 0x14D4, 0x1514, 0x1554, 0x1594, 0x15D4)
_V3_6_13 = SessionOffsets(0x17A4, 0x17E4, 0x1824, 0x1864, 0x18A4, 0x18E4)
_V3_7_0 = SessionOffsets(0x17C4, 0x1804, 0x1844, 0x1884, 0x18C4, 0x1904)
_V3_7_3 = SessionOffsets(0x17CC, 0x180C, 0x184C, 0x188C, 0x18CC, 0x190C)
_V3_7_7 = SessionOffsets(0x1754, 0x1794, 0x17D4, 0x1814, 0x1854, 0x1894)
_V3_8_4 = SessionOffsets(0x179C, 0x17DC, 0x181C, 0x185C, 0x189C, 0x18DC)
_V3_8_7 = SessionOffsets(0x1994, 0x19D4, 0x1A14, 0x1A54, 0x1A94, 0x1AD4)

# (first, last) release of each layout, inclusive.
TABLE: tuple[tuple[tuple[int, int, int], tuple[int, int, int], SessionOffsets], ...] = (
    ((3, 6, 12), (3, 6, 12), _V3_6_12),
    ((3, 6, 13), (3, 6, 16), _V3_6_13),
    ((3, 7, 0), (3, 7, 2), _V3_7_0),
    ((3, 7, 3), (3, 7, 6), _V3_7_3),
    ((3, 7, 7), (3, 7, 11), _V3_7_7),
    ((3, 8, 0), (3, 8, 3), _V3_7_7),
    ((3, 8, 4), (3, 8, 6), _V3_8_4),
    ((3, 8, 7), (3, 8, 9), _V3_8_7),
)


def session_offsets(version: str | None) -> SessionOffsets | None:
    """Offsets for a GnuTLS version string such as "3.7.9"; None if unknown."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version or "")
    if not m:
        return None
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    for first, last, offsets in TABLE:
        if first <= v <= last:
            return offsets
    return None

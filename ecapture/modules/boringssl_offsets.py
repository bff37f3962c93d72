"""Where BoringSSL keeps what the key reader needs, per release. Pure data.

BoringSSL has no versions, only snapshots: Android ships one per release (the
android<N>-release branches of platform/external/boringssl), and other users build their
own ("non-Android"). The values are offsets into ``ssl_st`` (the SSL* passed to
SSL_read/SSL_write), ``bssl::SSL3_STATE`` (ssl->s3) and ``SSL_SESSION``, as compiled with
offsetof() from each snapshot (upstream eCapture publishes such tables; see
../shared/reference/ecapture-anatomy.md §5). The Android 13 entry was also checked against
the machine code of Debian's android-libboringssl 13.0.0+r24: SSL_get_client_random,
SSL_get_session, SSL_SESSION_get_master_key and SSL_version read exactly these fields.

Only the TLS 1.2 master secret and the client random are read through them: TLS 1.3
secrets are taken as the library derives them (kern/boringssl.c). A release not covered
here is refused by name rather than read at a guessed place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BoringOffsets:
    ssl_version: int | None  # ssl_st.version (uint16_t); None: removed (Android 16)
    s3_version: int | None  # SSL3_STATE.version, where ssl_st has none
    s3: int  # ssl_st.s3 (a pointer)
    s3_client_random: int
    s3_established_session: int  # SSL3_STATE.established_session (a pointer)
    session: int  # ssl_st.session (a pointer): the session offered for resumption
    session_secret_length: int | None  # SSL_SESSION.secret_length; None: always 48
    session_secret: int  # SSL_SESSION.secret (the TLS 1.2 master secret)

    def cflags(self) -> list[str]:
        names = {
            "BSSL_SSL_VERSION": self.ssl_version, "BSSL_S3_VERSION": self.s3_version,
            "BSSL_SSL_S3": self.s3, "BSSL_S3_CLIENT_RANDOM": self.s3_client_random,
            "BSSL_S3_ESTABLISHED_SESSION": self.s3_established_session,
            "BSSL_SSL_SESSION": self.session,
            "BSSL_SESSION_SECRET_LENGTH": self.session_secret_length,
            "BSSL_SESSION_SECRET": self.session_secret,
        }
        return [f"-D{k}=0x{v:x}" for k, v in names.items() if v is not None]


_ANDROID_13 = BoringOffsets(0x10, None, 0x30, 0x30, 0x1C8, 0x58, 0xC, 0x10)
# Android 14 made SSL_SESSION.secret_length a uint8_t and grew SSL3_STATE by 8 bytes.
_ANDROID_14 = BoringOffsets(0x10, None, 0x30, 0x30, 0x1D0, 0x58, 0xA, 0xB)
# Android 16 moved the version into SSL3_STATE and dropped secret_length.
_ANDROID_16 = BoringOffsets(None, 0xD0, 0x30, 0x30, 0x1D0, 0x58, None, 0xA)

#: release name -> offsets. "na": BoringSSL's own tree as upstream eCapture measured it.
RELEASES: dict[str, BoringOffsets] = {
    "13": _ANDROID_13,
    "14": _ANDROID_14,
    "15": _ANDROID_14,
    "16": _ANDROID_16,
    "na": _ANDROID_14,
}


def normalise_release(release: str | None) -> str | None:
    """"13", "13.0.0+r24", "android13" -> "13"; "na", "non-android" -> "na"; else None."""
    text = (release or "").strip().lower()
    if text in ("na", "non-android"):
        return "na"
    m = re.fullmatch(r"(?:android)?(\d+)(?:[.+~-].*)?", text)
    return m.group(1) if m else None


def boringssl_offsets(release: str | None) -> BoringOffsets | None:
    """Offsets for a BoringSSL release (an Android release, or "na"); None if unknown."""
    name = normalise_release(release)
    return RELEASES.get(name) if name else None

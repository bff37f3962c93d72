"""The BoringSSL release -> offsets table: every listed release maps to its entry, the
spellings a release arrives in are understood, and anything else is unknown."""

from __future__ import annotations

import pytest

from ecapture.modules.boringssl_offsets import (
    RELEASES,
    BoringOffsets,
    boringssl_offsets,
    normalise_release,
)


@pytest.mark.parametrize(("release", "session_secret", "established", "has_ssl_version"), [
    ("13", 0x10, 0x1C8, True),
    ("14", 0xB, 0x1D0, True),
    ("15", 0xB, 0x1D0, True),
    ("16", 0xA, 0x1D0, False),
    ("na", 0xB, 0x1D0, True),
])
def test_every_release_maps_to_its_entry(release: str, session_secret: int, established: int,
                                         has_ssl_version: bool) -> None:
    found = boringssl_offsets(release)
    assert found is RELEASES[release]
    assert found.session_secret == session_secret
    assert found.s3_established_session == established
    assert (found.ssl_version is not None) == has_ssl_version
    # Exactly one place to read the negotiated version from.
    assert (found.ssl_version is None) != (found.s3_version is None)


def test_android_13_is_what_the_13_0_0_r24_machine_code_reads() -> None:
    """The fields Debian's android-libboringssl 13.0.0+r24 reads in SSL_get_client_random,
    SSL_get_session, SSL_SESSION_get_master_key and SSL_version (objdump)."""
    assert boringssl_offsets("13") == BoringOffsets(
        ssl_version=0x10, s3_version=None, s3=0x30, s3_client_random=0x30,
        s3_established_session=0x1C8, session=0x58, session_secret_length=0xC,
        session_secret=0x10)


@pytest.mark.parametrize(("given", "name"), [
    ("13", "13"), ("13.0.0+r24", "13"), ("13.0.0+r24-2", "13"), ("android14", "14"),
    ("15", "15"), ("16.0", "16"), ("NA", "na"), ("non-android", "na"), (" 14 ", "14"),
])
def test_spellings_of_a_release(given: str, name: str) -> None:
    assert normalise_release(given) == name
    assert boringssl_offsets(given) is RELEASES[name]


@pytest.mark.parametrize("given", [None, "", "12", "17", "11.0.0+r1", "1.1.1", "boringssl",
                                   "android", "13x"])
def test_outside_the_table_is_unknown(given: str | None) -> None:
    assert boringssl_offsets(given) is None


def test_cflags_leave_out_the_fields_a_release_lacks() -> None:
    a16 = RELEASES["16"].cflags()
    assert "-DBSSL_S3_VERSION=0xd0" in a16
    assert not any(f.startswith(("-DBSSL_SSL_VERSION=", "-DBSSL_SESSION_SECRET_LENGTH="))
                   for f in a16)
    assert "-DBSSL_SESSION_SECRET_LENGTH=0xc" in RELEASES["13"].cflags()

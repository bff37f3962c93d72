"""The version-to-offsets table as data: every OpenSSL release it lists maps to the layout
that release has, the boundaries of each range included, and nothing else maps at all.

The expected values are written out per release below, independently of the table's own
ranges, from the offsetof() figures of each layout (upstream eCapture's generated headers):
a range drawn one letter or one patch release too wide or too narrow fails here."""

from __future__ import annotations

import re
import string

import pytest

from ecapture.modules.openssl import VERSION_RE, ssl_version_offset
from ecapture.modules.openssl_offsets import V1_1_1_LETTERS, KeyOffsets, key_offsets

# (ssl_st.s3 pointer, client_random, session, SSL_SESSION.cipher, handshake_secret,
#  exporter_master_secret) of each 1.1.1 layout.
L111A = (0xA8, 0xB8, 0x510, 0x1F8, 0x174, 0x3B4)
L111B = (0xA8, 0xB8, 0x508, 0x1F8, 0x174, 0x3B4)
L111D = (0xA8, 0xB8, 0x510, 0x1F8, 0x17C, 0x3BC)
L111J = (0xA8, 0xB8, 0x510, 0x1F0, 0x17C, 0x3BC)
EXPECTED_111 = {
    "a": L111A,
    "b": L111B, "c": L111B,
    "d": L111D, "e": L111D, "f": L111D, "g": L111D, "h": L111D, "i": L111D,
    "j": L111J, "k": L111J, "l": L111J, "m": L111J, "n": L111J, "o": L111J, "p": L111J,
    "q": L111J, "r": L111J, "s": L111J, "t": L111J, "u": L111J, "v": L111J, "w": L111J,
}

# (client_random, session, SSL_SESSION.cipher, handshake_secret, exporter_master_secret)
L30 = (0x160, 0x918, 0x2F8, 0x584, 0x7C4)
L3012 = (0x160, 0x938, 0x2F8, 0x584, 0x7C4)
L320 = (0x140, 0x880, 0x300, 0x53C, 0x77C)
L323 = (0x140, 0x880, 0x2F8, 0x53C, 0x77C)
L324 = (0x148, 0x888, 0x2F8, 0x544, 0x784)
L350 = (0x188, 0x900, 0x2F8, 0x5BC, 0x7FC)
EXPECTED_3 = {
    "3.0.0": L30, "3.0.11": L30, "3.0.12": L3012, "3.0.13": L30, "3.0.19": L30,
    "3.0.22": L30, "3.1.0": L30, "3.1.8": L30,
    "3.2.0": L320, "3.2.2": L320, "3.2.3": L323, "3.2.4": L324, "3.2.6": L324,
    "3.3.0": L320, "3.3.1": L320, "3.3.2": L323, "3.3.3": L324, "3.3.7": L324,
    "3.4.0": L323, "3.4.1": L324, "3.4.6": L324,
    "3.5.0": L350, "3.5.7": L350, "3.6.0": L350, "3.6.2": L350, "4.0.0": L350,
    "4.0.1": L350,
}

UNKNOWN = ["1.1.1", "1.1.1x", "1.1.1z", "1.1.0l", "1.0.2u", "2.0.0", "3.7.0", "5.0.0",
           "3.0.13+quic", "1.1.1w+quic", "3.0", "", None, "1.1.1ww", "1.1.1W"]


def _layout_111(o: KeyOffsets) -> tuple[int | None, ...]:
    return (o.s3, o.client_random, o.session, o.session_cipher, o.handshake_secret,
            o.exporter_master_secret)


def _layout_3(o: KeyOffsets) -> tuple[int | None, ...]:
    return (o.client_random, o.session, o.session_cipher, o.handshake_secret,
            o.exporter_master_secret)


@pytest.mark.parametrize(("letter", "expected"), sorted(EXPECTED_111.items()))
def test_every_111_letter(letter: str, expected: tuple[int, ...]) -> None:
    found = key_offsets(f"1.1.1{letter}")
    assert found is not None
    assert _layout_111(found) == expected
    assert ssl_version_offset(f"1.1.1{letter}") == 0


@pytest.mark.parametrize(("version", "expected"), sorted(EXPECTED_3.items()))
def test_3x_releases_and_boundaries(version: str, expected: tuple[int, ...]) -> None:
    found = key_offsets(version)
    assert found is not None
    assert found.s3 is None  # embedded from 3.0: no pointer to follow
    assert _layout_3(found) == expected


@pytest.mark.parametrize("version", UNKNOWN)
def test_unknown_versions_have_no_offsets(version: str | None) -> None:
    assert key_offsets(version) is None


def test_111_ranges_are_contiguous_and_cover_a_to_w() -> None:
    covered = []
    for first, last, _ in V1_1_1_LETTERS:
        assert first <= last
        covered += string.ascii_lowercase[string.ascii_lowercase.index(first):
                                          string.ascii_lowercase.index(last) + 1]
    assert covered == list("abcdefghijklmnopqrstuvw")  # in order, no gap, no overlap


def test_s3_pointer_reaches_the_kernel_only_for_111() -> None:
    flags_111 = key_offsets("1.1.1w").cflags()  # type: ignore[union-attr]
    flags_3 = key_offsets("3.0.19").cflags()  # type: ignore[union-attr]
    assert "-DOFF_S3=0xa8" in flags_111 and "-DOFF_CLIENT_RANDOM=0xb8" in flags_111
    assert not any(f.startswith("-DOFF_S3=") for f in flags_3)


@pytest.mark.parametrize(("text", "version"), [
    (b"\0OpenSSL 1.1.1w  11 Sep 2023\0", "1.1.1w"),
    (b"\0OpenSSL 3.0.19 27 Jan 2026\0", "3.0.19"),
    (b"\0OpenSSL 3.0.13+quic 30 Jan 2024\0", "3.0.13+quic"),  # quictls, as node 18-20 had
    (b"\0OpenSSL 3.5.0-dev \0", "3.5.0"),
])
def test_version_strings(text: bytes, version: str) -> None:
    m = re.search(VERSION_RE, text)
    assert m is not None and m.group(1).decode() == version

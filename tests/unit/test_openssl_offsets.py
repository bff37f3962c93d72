"""The version-to-offsets table as data: every OpenSSL release it lists maps to the layout
that release has, the boundaries of each range included, and nothing else maps at all.

The expected values are written out per release below, independently of the table's own
ranges, from the offsetof() figures of each layout (upstream eCapture's generated headers):
a range drawn one letter or one patch release too wide or too narrow fails here.

Then the SSL BIO: where its methods and its data member are, as read from a library's own
code (x86-64 and arm64 code shapes, and the system's libssl against binutils)."""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess

import pytest

from ecapture.modules import openssl
from ecapture.modules.openssl import VERSION_RE, OpenSSLModule, ssl_version_offset
from ecapture.modules.openssl_bio import (
    SslBio,
    find_ssl_bio,
    loaded_member,
    returned_address,
    ssl_bio_methods,
)
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


# ---- the SSL BIO: its methods' addresses and the BIO's data member, read from code ----

def _arm64(*words: int) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


def _adrp_x0(pc: int, target: int) -> int:
    pages = ((target >> 12) - (pc >> 12)) & 0x1FFFFF
    return 0x90000000 | (pages & 3) << 29 | (pages >> 2) << 5


ARM64_RET, ARM64_BTI_C = 0xD65F03C0, 0xD503245F


@pytest.mark.parametrize(("code", "address", "machine", "expected"), [
    # Debian 12's 3.0 (no landing pad) and Ubuntu focal's 1.1.1f (endbr64) BIO_f_ssl
    (bytes.fromhex("488d0529870700c3"), 0x230D0, "EM_X86_64", 0x9B800),
    (bytes.fromhex("f30f1efa488d0505640600c3"), 0x201F0, "EM_X86_64", 0x86600),
    (bytes.fromhex("488d05f0ffffffc3"), 0x1000, "EM_X86_64", 0xFF7),  # lea backwards
    (bytes.fromhex("488d052987070031ffc3"), 0x230D0, "EM_X86_64", 0x9B800),  # xor edi, edi
    (_arm64(ARM64_BTI_C, _adrp_x0(0x20004, 0x9B800), 0x91000000 | 0x800 << 10, ARM64_RET),
     0x20000, "EM_AARCH64", 0x9B800),
])
def test_returned_address(code: bytes, address: int, machine: str, expected: int) -> None:
    assert returned_address(code, address, machine) == expected


@pytest.mark.parametrize(("code", "machine"), [
    (bytes.fromhex("488b4740c3"), "EM_X86_64"),  # a load, not an address
    (bytes.fromhex("488d0529870700488b00c3"), "EM_X86_64"),  # an address, then more work
    (bytes.fromhex("488d0529870700"), "EM_X86_64"),  # no ret
    (_arm64(0xF9402000, ARM64_RET), "EM_AARCH64"),
])
def test_returned_address_refuses_other_code(code: bytes, machine: str) -> None:
    with pytest.raises(ValueError, match="unexpected code"):
        returned_address(code, 0x1000, machine)


@pytest.mark.parametrize(("code", "machine", "expected"), [
    (bytes.fromhex("488b474031ffc3"), "EM_X86_64", 0x40),  # Debian 12's 3.0 BIO_get_data
    (bytes.fromhex("f30f1efa488b4738c3"), "EM_X86_64", 0x38),  # Ubuntu focal's 1.1.1f
    (_arm64(0xF9402000, ARM64_RET), "EM_AARCH64", 0x40),  # ldr x0, [x0, #0x40]
])
def test_loaded_member(code: bytes, machine: str, expected: int) -> None:
    assert loaded_member(code, 0x1000, machine) == expected


def test_loaded_member_refuses_other_code() -> None:
    with pytest.raises(ValueError, match=r"unexpected code \(mov eax, dword ptr"):
        loaded_member(bytes.fromhex("8b4740c3"), 0x1000, "EM_X86_64")  # a 4-byte member


SYSTEM_LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def _tool(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(not os.path.exists(SYSTEM_LIBSSL) or shutil.which("readelf") is None,
                    reason="needs Debian's x86-64 libssl.so.3 and binutils")
def test_ssl_bio_methods_agree_with_binutils() -> None:
    """The table BIO_f_ssl returns, as objdump disassembles it, and the RELATIVE relocations
    readelf lists for its bwrite and bread slots: the addresses found are those."""
    dump = _tool("objdump", "-d", "--no-show-raw-insn", SYSTEM_LIBSSL)
    body = dump.split("<BIO_f_ssl@@OPENSSL_3.0.0>:\n", 1)[1].split("\n\n", 1)[0]
    table = int(re.search(r"lea\s+0x[0-9a-f]+\(%rip\),%rax\s+# ([0-9a-f]+)", body)[1], 16)  # type: ignore[index]
    relocs = {int(m[1], 16): int(m[2], 16) for m in re.finditer(
        r"^([0-9a-f]+)\s+[0-9a-f]+\s+R_X86_64_RELATIVE\s+([0-9a-f]+)$",
        _tool("readelf", "-rW", SYSTEM_LIBSSL), re.M)}
    assert ssl_bio_methods(SYSTEM_LIBSSL) == (relocs[table + 0x20], relocs[table + 0x10])
    assert find_ssl_bio(SYSTEM_LIBSSL).data_offset == 0x40  # bio_st: libctx, method, ...


LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


@pytest.mark.skipif(not os.path.exists(LIBC), reason="needs Debian's x86-64 libc")
def test_find_ssl_bio_says_why_not() -> None:
    with pytest.raises(ValueError, match="^no BIO_f_ssl among its dynamic symbols$"):
        find_ssl_bio(LIBC)


@pytest.mark.skipif(not os.path.exists(SYSTEM_LIBSSL), reason="needs Debian's libssl.so.3")
def test_module_notes_an_ssl_bio_it_cannot_find(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture still runs (SSL_read and the rest), and the user is told in one line
    which programs it does not see."""
    def unreadable(libssl: str, pid: int | None = None) -> SslBio:
        raise ValueError("BIO_f_ssl: unexpected code (ud2)")

    monkeypatch.setattr(openssl, "find_ssl_bio", unreadable)
    module = OpenSSLModule({"libssl": SYSTEM_LIBSSL, "pid": None, "uid": None,
                            "ifname": None})
    module.init()
    assert module.ssl_bio is None
    assert not any(p.fn.startswith("uprobe_ssl_bio") for p in module.library_probes())
    assert not any(f.startswith("-DBIO_DATA_OFFSET") for f in module.library_cflags())
    (note,) = module.notes
    assert note == (f"OpenSSL's SSL BIO not found in {SYSTEM_LIBSSL} (BIO_f_ssl: unexpected "
                    "code (ud2)): what programs read and write through it (BIO_f_ssl, e.g. "
                    "openssl s_server -www) is not captured")


@pytest.mark.skipif(not os.path.exists(SYSTEM_LIBSSL), reason="needs Debian's libssl.so.3")
def test_module_probes_the_ssl_bio_at_its_methods() -> None:
    module = OpenSSLModule({"libssl": SYSTEM_LIBSSL, "pid": None, "uid": None,
                            "ifname": None})
    module.init()
    assert module.notes == [] and module.ssl_bio is not None
    read, write = ssl_bio_methods(SYSTEM_LIBSSL)
    bio = [(p.kind, p.fn, p.address) for p in module.library_probes() if p.address]
    assert bio == [("uprobe", "uprobe_ssl_bio_read", read),
                   ("uretprobe", "uretprobe_SSL_read", read),
                   ("uprobe", "uprobe_ssl_bio_write", write),
                   ("uretprobe", "uretprobe_SSL_write", write)]
    assert "-DBIO_DATA_OFFSET=0x40" in module.library_cflags()

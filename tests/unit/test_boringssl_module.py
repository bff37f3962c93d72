"""The boringssl module's own rules: a secret event becomes one key-log line cut to the
secret's real length; BoringSSL is told from OpenSSL by what its libssl exports; bad
options and the wrong library are one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.events import KeyLogEntry
from ecapture.modules.boringssl import (
    BoringSSLModule,
    android_release_from_build_prop,
    find_boringssl,
    is_boringssl,
)
from ecapture.structs.boringssl import EVENT_BORINGSSL_SECRET, LABELS, boringssl_secret_event_t
from ecapture.targets import find_library
from ecapture.testing.factories import make_event

CONFIG = {"libssl": None, "android_release": None, "pid": None, "uid": None, "ifname": None}
RANDOM = bytes(range(1, 33))


def entries(label: int, secret: bytes, n: int) -> list[KeyLogEntry]:
    module = BoringSSLModule(CONFIG)
    data = make_event(boringssl_secret_event_t, kind=EVENT_BORINGSSL_SECRET, pid=7, tid=8,
                      label=label, secret_len=n, version=0x0304, client_random=RANDOM,
                      secret=secret, comm=b"bssl")
    return [e for e in module.dispatch(module.decode("events", data))
            if isinstance(e, KeyLogEntry)]


@pytest.mark.parametrize("n", [32, 48])
def test_a_secret_is_one_line_of_its_own_length(n: int) -> None:
    secret = bytes(range(100, 148))
    for label, name in LABELS.items():
        (entry,) = entries(label, secret, n)
        assert entry.line == f"{name} {RANDOM.hex()} {secret[:n].hex()}"
        assert (entry.pid, entry.tid, entry.comm) == (7, 8, "bssl")


def test_unknown_labels_and_empty_secrets_give_no_line() -> None:
    assert entries(max(LABELS) + 1, b"\x01" * 48, 32) == []
    assert entries(4, bytes(48), 32) == []


@pytest.mark.parametrize("n", [0, 49, 255])
def test_an_impossible_length_is_a_decode_error(n: int) -> None:
    with pytest.raises(DecodeError, match="secret of"):
        entries(4, b"\x01" * 48, n)


def test_check_rejects_an_unknown_release() -> None:
    with pytest.raises(ConfigError, match="--android-release 12: known releases are 13"):
        BoringSSLModule({**CONFIG, "android_release": "12"}).check()


def test_build_prop(tmp_path) -> None:
    prop = tmp_path / "build.prop"
    prop.write_text("# comment\nro.build.version.sdk=34\nro.build.version.release=14\n")
    assert android_release_from_build_prop(str(prop)) == "14"
    assert android_release_from_build_prop(str(tmp_path / "none")) is None


OPENSSL = find_library([r"libssl\.so\.3"])


@pytest.mark.skipif(OPENSSL is None, reason="OpenSSL 3's libssl is not installed")
def test_openssl_is_not_boringssl() -> None:
    assert OPENSSL is not None
    assert not is_boringssl(OPENSSL)
    module = BoringSSLModule({**CONFIG, "libssl": OPENSSL})
    with pytest.raises(AttachError, match="is not BoringSSL .* `ecapture tls`"):
        module.init()


BORINGSSL = find_boringssl()


@pytest.mark.skipif(BORINGSSL is None, reason="no BoringSSL libssl installed")
def test_installed_boringssl_is_found_with_its_libcrypto() -> None:
    module = BoringSSLModule({**CONFIG, "android_release": "13"})
    module.init()
    assert module.libssl == BORINGSSL and is_boringssl(module.libssl)
    assert module.libcrypto is not None
    assert os.path.basename(module.libcrypto).startswith("libcrypto")
    assert module.version == "BoringSSL (Android 13)"
    module.require_keys()  # known release: keys possible
    assert "-DCAPTURE_KEYS=1" in module.library_cflags()
    assert {p.target for p in module.library_probes()} >= {"SSL_read", "HKDF_expand"}


@pytest.mark.skipif(BORINGSSL is None, reason="no BoringSSL libssl installed")
def test_unknown_release_captures_plaintext_and_refuses_keys_in_one_line(monkeypatch) -> None:
    import ecapture.modules.boringssl as bssl

    monkeypatch.setattr(bssl, "release_from_package", lambda path: None)
    monkeypatch.setattr(bssl, "android_release_from_build_prop", lambda: None)
    module = BoringSSLModule(CONFIG)
    module.init()
    assert module.version == "BoringSSL (release unknown)"
    assert module.library_cflags() == []
    assert "HKDF_expand" not in {p.target for p in module.library_probes()}
    with pytest.raises(AttachError, match="release unknown.*--android-release.*plaintext"):
        module.require_keys()


def test_release_from_the_installing_package(tmp_path: Path) -> None:
    """dpkg's own files, as Debian lays them out: the file list names the library, the
    status file gives the package's version, whose AOSP tag is the release."""
    from ecapture.modules.boringssl import release_from_package

    lib = tmp_path / "usr/lib/x86_64-linux-gnu/android/libssl.so.0"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    dpkg = tmp_path / "dpkg"
    (dpkg / "info").mkdir(parents=True)
    (dpkg / "info" / "android-libboringssl:amd64.list").write_text(f"/.\n/usr\n{lib}\n")
    (dpkg / "info" / "other:amd64.list").write_text("/usr/lib/libother.so\n")
    (dpkg / "status").write_text(
        "Package: other\nStatus: install ok installed\nVersion: 1.0\n\n"
        "Package: android-libboringssl\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 13.0.0+r24-2\nDescription: BoringSSL\n more text: here\n\n")
    assert release_from_package(str(lib), str(dpkg)) == "13"
    assert release_from_package(str(tmp_path / "elsewhere.so"), str(dpkg)) is None
    (dpkg / "status").write_text("Package: android-libboringssl\nStatus: deinstall ok "
                                 "config-files\nVersion: 13.0.0+r24-2\n")
    assert release_from_package(str(lib), str(dpkg)) is None

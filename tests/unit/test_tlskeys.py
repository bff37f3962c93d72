"""TLS secrets: HKDF against published vectors, key-log lines, and the keylog model."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ecapture.errors import AttachError
from ecapture.events import lost_notice
from ecapture.modules.openssl import OpenSSLModule
from ecapture.modules.openssl_offsets import key_offsets
from ecapture.outputs.keylog import KeylogOutput
from ecapture.tlskeys import MasterSecret, hkdf_expand, hkdf_expand_label


def test_hkdf_expand_rfc5869_case1() -> None:
    prk = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_expand(prk, info, 42, "sha256")
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


# RFC 8448 §3 (simple 1-RTT handshake): handshake secret, transcript hash of
# ClientHello..ServerHello, and the two handshake traffic secrets derived from them.
HS = bytes.fromhex("1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac")
HELLO_HASH = bytes.fromhex("860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8")
C_HS = "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21"
S_HS = "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38"


def test_hkdf_expand_label_rfc8448() -> None:
    assert hkdf_expand_label(HS, "c hs traffic", HELLO_HASH, 32, "sha256").hex() == C_HS
    assert hkdf_expand_label(HS, "s hs traffic", HELLO_HASH, 32, "sha256").hex() == S_HS


def secret(version: int, **over: object) -> MasterSecret:
    values: dict[str, object] = dict(
        timestamp_ns=1, pid=1, comm="curl", ssl=1, version=version, cipher_id=0x03001301,
        client_random=bytes(range(32)), master_key=b"\x11" * 48,
        handshake_secret=HS + bytes(32), handshake_traffic_hash=HELLO_HASH + bytes(32),
        client_app_traffic_secret=b"\x22" * 32 + bytes(32),
        server_app_traffic_secret=b"\x33" * 32 + bytes(32),
        exporter_master_secret=b"\x44" * 32 + bytes(32))
    values.update(over)
    return MasterSecret(**values)  # type: ignore[arg-type]


def test_keylog_lines_tls13() -> None:
    cr = bytes(range(32)).hex()
    assert secret(0x0304).keylog_lines() == [
        f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {cr} {C_HS}",
        f"SERVER_HANDSHAKE_TRAFFIC_SECRET {cr} {S_HS}",
        f"CLIENT_TRAFFIC_SECRET_0 {cr} {'22' * 32}",
        f"SERVER_TRAFFIC_SECRET_0 {cr} {'33' * 32}",
        f"EXPORTER_SECRET {cr} {'44' * 32}",
    ]


def test_keylog_lines_tls12_and_sha384() -> None:
    cr = bytes(range(32)).hex()
    assert secret(0x0303).keylog_lines() == [f"CLIENT_RANDOM {cr} {'11' * 48}"]
    lines = secret(0x0304, cipher_id=0x03001302,
                   client_app_traffic_secret=b"\x22" * 64).keylog_lines()
    assert f"CLIENT_TRAFFIC_SECRET_0 {cr} {'22' * 48}" in lines  # SHA-384: 48 bytes
    assert secret(0x0303, client_random=bytes(32)).keylog_lines() == []  # nothing read


def test_keylog_output_dedups_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    out = KeylogOutput(str(path))
    for entry in (*secret(0x0303).entries(), *secret(0x0303).entries()):
        out.write(entry)  # the second: the other side of the same connection
    out.write(lost_notice(0, "tls", "events", 1))  # not a secret: ignored
    out.close()
    assert path.read_text().splitlines() == secret(0x0303).keylog_lines()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("version", ["1.1.1", "3.7.0", None])
def test_unknown_version_refused_by_name(version: str | None) -> None:
    module = OpenSSLModule({})
    module.libssl, module.version = "/lib/libssl.so.3", version
    module.key_offsets = key_offsets(version)
    with pytest.raises(AttachError, match=str(version) if version else "unrecognised"):
        module.require_keys()


def test_known_versions_have_offsets() -> None:
    for v in ("3.0.0", "3.0.12", "3.0.22", "3.1.8", "3.2.4", "3.3.1", "3.4.0", "3.5.2"):
        assert key_offsets(v) is not None, v
    assert key_offsets("3.0.12") != key_offsets("3.0.13")

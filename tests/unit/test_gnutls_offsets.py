"""The GnuTLS version-to-offsets table: every listed release maps to its layout, the
boundaries included, and releases outside the table have none."""

from __future__ import annotations

import pytest

from ecapture.errors import AttachError
from ecapture.modules.gnutls import GnuTLSModule, GnuTlsSecrets
from ecapture.modules.gnutls_offsets import TABLE, SessionOffsets, session_offsets

# key.proto.tls13.e_ckey of each layout (the other TLS 1.3 secrets follow it every 64 bytes).
EARLY = {
    "3.6.12": 0x1494,
    **{f"3.6.{p}": 0x17A4 for p in range(13, 17)},
    **{f"3.7.{p}": 0x17C4 for p in range(0, 3)},
    **{f"3.7.{p}": 0x17CC for p in range(3, 7)},
    **{f"3.7.{p}": 0x1754 for p in range(7, 12)},
    **{f"3.8.{p}": 0x1754 for p in range(0, 4)},
    **{f"3.8.{p}": 0x179C for p in range(4, 7)},
    **{f"3.8.{p}": 0x1994 for p in range(7, 10)},
}


@pytest.mark.parametrize("version", sorted(EARLY))
def test_every_listed_release_has_its_layout(version: str) -> None:
    offsets = session_offsets(version)
    assert offsets is not None
    assert offsets.e_ckey == EARLY[version]
    step = [offsets.e_ckey, offsets.hs_ckey, offsets.hs_skey, offsets.ap_ckey,
            offsets.ap_skey, offsets.ap_expkey]
    assert [b - a for a, b in zip(step, step[1:], strict=False)] == [64] * 5


@pytest.mark.parametrize("version", ["3.6.11", "3.6.17", "3.7.12", "3.8.10", "3.5.19",
                                     "4.0.0", "3.7", "3.7.9a", "", None, "garbage"])
def test_releases_outside_the_table_have_none(version: str | None) -> None:
    assert session_offsets(version) is None


def test_table_ranges_are_ordered_and_disjoint() -> None:
    for (first, last, _), (nxt, _, _) in zip(TABLE, TABLE[1:], strict=False):
        assert first <= last < nxt


def test_verified_release_flags() -> None:
    """3.7.9, the release checked against GnuTLS's own key log: the -D flags the kernel
    program gets."""
    offsets = session_offsets("3.7.9")
    assert isinstance(offsets, SessionOffsets)
    flags = dict(f[2:].split("=") for f in offsets.cflags())
    assert flags["GNUTLS_OFF_CLIENT_RANDOM"] == "0x50"
    assert flags["GNUTLS_OFF_MASTER_SECRET"] == "0x20"
    assert flags["GNUTLS_OFF_HS_CKEY"] == "0x1794"
    assert flags["GNUTLS_OFF_AP_EXPKEY"] == "0x1894"


def _secrets(protocol: int, prf_mac: int, **values: bytes) -> GnuTlsSecrets:
    """A session's secrets as the kernel reads them: zeros unless given."""
    fields = {name: bytes(64) for name in (
        "client_early_traffic_secret", "client_handshake_traffic_secret",
        "server_handshake_traffic_secret", "client_traffic_secret_0",
        "server_traffic_secret_0", "exporter_secret")}
    fields.update(values)
    return GnuTlsSecrets(timestamp_ns=1, pid=2, tid=2, uid=0, comm="x", session=0x1000,
                         protocol=protocol, prf_mac=prf_mac, client_random=b"\x01" * 32,
                         master_secret=b"\x02" * 48, **fields)


def test_tls13_secret_length_follows_the_prf_hash() -> None:
    full = bytes(range(1, 65))
    for prf_mac, n in ((7, 48), (6, 32)):
        entries = _secrets(5, prf_mac, client_traffic_secret_0=full).entries()
        assert [(e.label, e.secret) for e in entries] == [("CLIENT_TRAFFIC_SECRET_0", full[:n])]


def test_tls12_gives_the_master_secret_only() -> None:
    entries = _secrets(4, 7, client_traffic_secret_0=bytes(range(1, 65))).entries()
    assert [e.line for e in entries] == ["CLIENT_RANDOM " + "01" * 32 + " " + "02" * 48]


def test_module_refuses_keys_for_an_unknown_version() -> None:
    module = GnuTLSModule({"gnutls": None, "pid": None, "uid": None, "ifname": None})
    module.libgnutls, module.version = "/lib/libgnutls.so.30", "3.9.1"
    with pytest.raises(AttachError, match=r"GnuTLS 3\.9\.1, .*plaintext capture still works"):
        module.require_keys()
    assert module.library_cflags() == []

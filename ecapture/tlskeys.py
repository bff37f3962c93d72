"""TLS secrets as SSLKEYLOGFILE lines (RFC 9850 format). Pure.

TLS 1.3 handshake traffic secrets are not kept by OpenSSL after the handshake; they are
derived here from the handshake secret and the transcript hash it keeps, as RFC 8446 §7.1
does: Derive-Secret(handshake_secret, "c hs traffic" / "s hs traffic", transcript).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ecapture.events import Fragment, KeyLogEntry


def hkdf_expand(prk: bytes, info: bytes, length: int, hash_name: str) -> bytes:
    """RFC 5869 §2.3."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int,
                      hash_name: str) -> bytes:
    """RFC 8446 §7.1: HKDF-Expand with the HkdfLabel structure and the "tls13 " prefix."""
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return hkdf_expand(secret, info, length, hash_name)


def suite_hash(cipher_id: int) -> tuple[str, int]:
    """Hash and secret length of a TLS 1.3 cipher suite (the low 16 bits of OpenSSL's id):
    TLS_AES_256_GCM_SHA384 (0x1302) uses SHA-384; the others SHA-256."""
    return ("sha384", 48) if cipher_id & 0xFFFF == 0x1302 else ("sha256", 32)


@dataclass(frozen=True, slots=True)
class MasterSecret(Fragment):
    """What the kernel read from one connection's OpenSSL structs: raw material from which
    the key-log entries are derived (:meth:`entries`)."""

    timestamp_ns: int
    pid: int
    comm: str
    ssl: int
    version: int
    cipher_id: int
    client_random: bytes
    master_key: bytes
    handshake_secret: bytes
    handshake_traffic_hash: bytes
    client_app_traffic_secret: bytes
    server_app_traffic_secret: bytes
    exporter_master_secret: bytes

    def secrets(self) -> list[tuple[str, bytes]]:
        """(label, secret) pairs, in the order SSLKEYLOGFILE writers use."""
        if not any(self.client_random):
            return []
        if self.version != 0x0304:
            if not any(self.master_key):
                return []
            return [("CLIENT_RANDOM", self.master_key)]
        hash_name, n = suite_hash(self.cipher_id)
        hs, transcript = self.handshake_secret[:n], self.handshake_traffic_hash[:n]
        out = []
        if any(hs):
            for name, label in (("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "c hs traffic"),
                                ("SERVER_HANDSHAKE_TRAFFIC_SECRET", "s hs traffic")):
                out.append((name, hkdf_expand_label(hs, label, transcript, n, hash_name)))
        for name, value in (("CLIENT_TRAFFIC_SECRET_0", self.client_app_traffic_secret),
                            ("SERVER_TRAFFIC_SECRET_0", self.server_app_traffic_secret),
                            ("EXPORTER_SECRET", self.exporter_master_secret)):
            if any(value[:n]):
                out.append((name, value[:n]))
        return out

    def keylog_lines(self) -> list[str]:
        return [e.line for e in self.entries()]

    def entries(self) -> list[KeyLogEntry]:
        """The key-log entries; tid and uid are 0: the kernel event does not carry them."""
        return [KeyLogEntry(self.timestamp_ns, self.pid, 0, 0, self.comm, label,
                            self.client_random, secret) for label, secret in self.secrets()]

"""The GnuTLS library's own event struct, mirroring kern/gnutls.h. Everything else a GnuTLS
capture sends is the TLS family's (:mod:`ecapture.structs.tls`).

C declaration (kern/gnutls.h)::

    struct gnutls_secrets_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 session;
        __u32 tid; __u32 uid; __s32 protocol; __s32 prf_mac;
        __u8 client_random[32]; __u8 master_secret[48];
        __u8 client_early_traffic_secret[64];
        __u8 client_handshake_traffic_secret[64]; __u8 server_handshake_traffic_secret[64];
        __u8 client_traffic_secret_0[64]; __u8 server_traffic_secret_0[64];
        __u8 exporter_secret[64];
        char comm[16];
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "gnutls.h"
# Kinds on the TLS modules' "events" map: 1 and 2 are the family's, 3 OpenSSL's secrets.
EVENT_GNUTLS_SECRETS = 5
MAX_HASH_SIZE = 64

gnutls_secrets_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "session" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "protocol" / cs.Int32sl,
    "prf_mac" / cs.Int32sl,
    "client_random" / cs.Bytes(32),
    "master_secret" / cs.Bytes(48),
    "client_early_traffic_secret" / cs.Bytes(MAX_HASH_SIZE),
    "client_handshake_traffic_secret" / cs.Bytes(MAX_HASH_SIZE),
    "server_handshake_traffic_secret" / cs.Bytes(MAX_HASH_SIZE),
    "client_traffic_secret_0" / cs.Bytes(MAX_HASH_SIZE),
    "server_traffic_secret_0" / cs.Bytes(MAX_HASH_SIZE),
    "exporter_secret" / cs.Bytes(MAX_HASH_SIZE),
    "comm" / cs.Bytes(16),
)

GNUTLS_SECRETS = KernelStruct("gnutls_secrets_event_t", HEADER, gnutls_secrets_event_t,
                              "GNUTLS_EVENT_SECRETS")
STRUCTS = {GNUTLS_SECRETS.name: GNUTLS_SECRETS}

"""The OpenSSL library's own event struct, mirroring kern/openssl.h. Everything else an
OpenSSL capture sends is the TLS family's (:mod:`ecapture.structs.tls`).

C declaration (kern/openssl.h)::

    struct master_secret_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 ssl;
        __s32 version; __u32 cipher_id;
        __u8 client_random[32]; __u8 master_key[48];
        __u8 handshake_secret[64]; __u8 handshake_traffic_hash[64];
        __u8 client_app_traffic_secret[64]; __u8 server_app_traffic_secret[64];
        __u8 exporter_master_secret[64];
        char comm[16];
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "openssl.h"
EVENT_MASTER_SECRET = 3

master_secret_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "ssl" / cs.Int64ul,
    "version" / cs.Int32sl,
    "cipher_id" / cs.Int32ul,
    "client_random" / cs.Bytes(32),
    "master_key" / cs.Bytes(48),
    "handshake_secret" / cs.Bytes(64),
    "handshake_traffic_hash" / cs.Bytes(64),
    "client_app_traffic_secret" / cs.Bytes(64),
    "server_app_traffic_secret" / cs.Bytes(64),
    "exporter_master_secret" / cs.Bytes(64),
    "comm" / cs.Bytes(16),
)

MASTER_SECRET = KernelStruct("master_secret_event_t", HEADER, master_secret_event_t,
                             "OPENSSL_EVENT_MASTER_SECRET")
STRUCTS = {MASTER_SECRET.name: MASTER_SECRET}

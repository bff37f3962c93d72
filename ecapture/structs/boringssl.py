"""The BoringSSL library's own event struct, mirroring kern/boringssl.h. Everything else a
BoringSSL capture sends is the TLS family's (:mod:`ecapture.structs.tls`).

C declaration (kern/boringssl.h)::

    struct boringssl_secret_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 ssl;
        __u32 tid; __u16 version; __u8 label; __u8 secret_len;
        __u8 client_random[32]; __u8 secret[48];
        char comm[16];
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "boringssl.h"
EVENT_BORINGSSL_SECRET = 6
SECRET_MAX = 48

#: enum boringssl_secret_label -> the key-log label its secret is written under
LABELS = {
    0: "CLIENT_RANDOM",
    1: "CLIENT_EARLY_TRAFFIC_SECRET",
    2: "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    3: "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    4: "CLIENT_TRAFFIC_SECRET_0",
    5: "SERVER_TRAFFIC_SECRET_0",
    6: "EXPORTER_SECRET",
}

boringssl_secret_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "ssl" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "version" / cs.Int16ul,
    "label" / cs.Int8ul,
    "secret_len" / cs.Int8ul,
    "client_random" / cs.Bytes(32),
    "secret" / cs.Bytes(SECRET_MAX),
    "comm" / cs.Bytes(16),
)

BORINGSSL_SECRET = KernelStruct("boringssl_secret_event_t", HEADER, boringssl_secret_event_t,
                                "BORINGSSL_EVENT_SECRET")
STRUCTS = {BORINGSSL_SECRET.name: BORINGSSL_SECRET}

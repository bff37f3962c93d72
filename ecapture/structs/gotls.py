"""The gotls module's own event struct, mirroring kern/gotls.h. Everything else a Go
capture sends is the TLS family's (:mod:`ecapture.structs.tls`).

C declaration (kern/gotls.h)::

    struct go_keylog_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 tid; __u32 uid;
        __u32 label_len; __u32 client_random_len; __u32 secret_len; __u32 unread;
        __u64 label_ptr;
        char label[32]; __u8 client_random[32]; __u8 secret[64];
        char comm[16];
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "gotls.h"
EVENT_GOTLS_KEYLOG = 7
LABEL_MAX = 32
RANDOM_MAX = 32
SECRET_MAX = 64
# go_keylog_event_t.unread: the fields the kernel could not read
UNREAD_LABEL = 0x1
UNREAD_RANDOM = 0x2
UNREAD_SECRET = 0x4

go_keylog_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "label_len" / cs.Int32ul,
    "client_random_len" / cs.Int32ul,
    "secret_len" / cs.Int32ul,
    "unread" / cs.Int32ul,
    "label_ptr" / cs.Int64ul,
    "label" / cs.Bytes(LABEL_MAX),
    "client_random" / cs.Bytes(RANDOM_MAX),
    "secret" / cs.Bytes(SECRET_MAX),
    "comm" / cs.Bytes(16),
)

GO_KEYLOG = KernelStruct("go_keylog_event_t", HEADER, go_keylog_event_t, "GOTLS_EVENT_KEYLOG")
STRUCTS = {GO_KEYLOG.name: GO_KEYLOG}

"""Event structs of the postgres module, mirroring kern/postgres.h field for field.

C declarations (kern/postgres.h)::

    struct pg_parse_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 text_len;
        __u8 msg_type; __u8 nested; __u8 truncated; __u8 reserved[5];
        char comm[16];
        __u8 text[PG_TEXT_MAX];        // only text_len bytes are sent
    };

    struct pg_execute_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 text_len;
        __u8 msg_type; __u8 truncated; __u8 reserved[6];
        char comm[16];
        char portal[PG_NAME_MAX];
        char statement[PG_NAME_MAX];
        __u8 text[PG_TEXT_MAX];        // only text_len bytes are sent
    };

    struct pg_error_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 body_len;
        __u8 truncated; __u8 reserved[7];
        char comm[16];
        __u8 body[PG_ERROR_MAX];       // only body_len bytes are sent
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "postgres.h"
EVENT_PG_PARSE = 1
EVENT_PG_EXECUTE = 2
EVENT_PG_ERROR = 3
PG_TEXT_MAX = 32768 - 256  # a per-CPU map value is at most 32 KiB
PG_NAME_MAX = 64
PG_ERROR_MAX = 1024

pg_parse_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "uid" / cs.Int32ul,
    "text_len" / cs.Int32ul,
    "msg_type" / cs.Int8ul,
    "nested" / cs.Int8ul,
    "truncated" / cs.Int8ul,
    "reserved" / cs.Bytes(5),
    "comm" / cs.Bytes(16),
    "text" / cs.Bytes(cs.this.text_len),
)

pg_execute_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "uid" / cs.Int32ul,
    "text_len" / cs.Int32ul,
    "msg_type" / cs.Int8ul,
    "truncated" / cs.Int8ul,
    "reserved" / cs.Bytes(6),
    "comm" / cs.Bytes(16),
    "portal" / cs.Bytes(PG_NAME_MAX),
    "statement" / cs.Bytes(PG_NAME_MAX),
    "text" / cs.Bytes(cs.this.text_len),
)

pg_error_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "uid" / cs.Int32ul,
    "body_len" / cs.Int32ul,
    "truncated" / cs.Int8ul,
    "reserved" / cs.Bytes(7),
    "comm" / cs.Bytes(16),
    "body" / cs.Bytes(cs.this.body_len),
)

PG_PARSE = KernelStruct("pg_parse_event_t", HEADER, pg_parse_event_t, "PG_EVENT_PARSE")
PG_EXECUTE = KernelStruct("pg_execute_event_t", HEADER, pg_execute_event_t, "PG_EVENT_EXECUTE")
PG_ERROR = KernelStruct("pg_error_event_t", HEADER, pg_error_event_t, "PG_EVENT_ERROR")
STRUCTS = {s.name: s for s in (PG_PARSE, PG_EXECUTE, PG_ERROR)}

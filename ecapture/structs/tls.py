"""Event structs of the TLS family, mirroring kern/tls.h field for field. Every TLS library
module (OpenSSL, and the others as they come) sends these; a library adds only its own
secrets struct. The names keep their OpenSSL-era spelling because recordings identify
structs by name.

C declarations (kern/tls.h)::

    struct ssl_data_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 start_ns; __u64 ssl;
        __u32 tid; __u32 uid; __s32 fd; __s32 version;
        __u32 total_len; __u32 offset; __u32 data_len;
        __u8 direction; __u8 func; __u16 reserved;
        char comm[16];
        __u8 data[TLS_CHUNK_SIZE];   // only data_len bytes are sent
    };

    struct conn_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 sock;
        __u32 tid; __u32 uid; __s32 fd;
        __u16 family; __u8 conn; __u8 reserved;
        __u16 lport; __u16 rport;
        __u8 laddr[16]; __u8 raddr[16];
        char comm[16];
        __u32 reserved2;
    };

    struct exec_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 reserved;
        char comm[16];
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "tls.h"
EVENT_SSL_DATA = 1
EVENT_CONN = 2
EVENT_EXEC = 8
TLS_CHUNK_SIZE = 16384

ssl_data_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "start_ns" / cs.Int64ul,
    "ssl" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "fd" / cs.Int32sl,
    "version" / cs.Int32sl,
    "total_len" / cs.Int32ul,
    "offset" / cs.Int32ul,
    "data_len" / cs.Int32ul,
    "direction" / cs.Int8ul,
    "func" / cs.Int8ul,
    "reserved" / cs.Int16ul,
    "comm" / cs.Bytes(16),
    "data" / cs.Bytes(cs.this.data_len),
)

conn_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "sock" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "fd" / cs.Int32sl,
    "family" / cs.Int16ul,
    "conn" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "lport" / cs.Int16ul,
    "rport" / cs.Int16ul,
    "laddr" / cs.Bytes(16),
    "raddr" / cs.Bytes(16),
    "comm" / cs.Bytes(16),
    "reserved2" / cs.Int32ul,
)

exec_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "uid" / cs.Int32ul,
    "reserved" / cs.Int32ul,
    "comm" / cs.Bytes(16),
)

SSL_DATA = KernelStruct("ssl_data_event_t", HEADER, ssl_data_event_t, "TLS_EVENT_DATA")
CONN = KernelStruct("conn_event_t", HEADER, conn_event_t, "TLS_EVENT_CONN")
EXEC = KernelStruct("exec_event_t", HEADER, exec_event_t, "TLS_EVENT_EXEC")
STRUCTS = {s.name: s for s in (SSL_DATA, CONN, EXEC)}

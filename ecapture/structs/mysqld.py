"""Event structs of the mysqld module, mirroring kern/mysqld.h field for field.

C declarations (kern/mysqld.h)::

    struct mysqld_query_event_t {
        __u32 kind; __u32 pid; __u64 start_ns; __u64 conn;
        __u32 tid; __u32 uid;
        __u32 command; __u32 total_len; __u32 offset; __u32 data_len;
        __u8 abi; __u8 reserved[7];
        char comm[16];
        __u8 data[MYSQLD_CHUNK_SIZE];   // only data_len bytes are sent
    };

    struct mysqld_done_event_t {
        __u32 kind; __u32 pid; __u64 start_ns; __u64 end_ns;
        __u32 tid; __u32 command; __u32 error; __u32 raised; __u32 stmt_id;
        __u16 params; __u16 columns; __s32 retval;
        __u8 returned; __u8 prepared; __u16 reserved;
        __u32 msg_len; __u32 reserved2;
        __u8 msg[MYSQLD_MSG_MAX];       // only msg_len bytes are sent
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "mysqld.h"
EVENT_MYSQLD_QUERY = 1
EVENT_MYSQLD_DONE = 2
MYSQLD_CHUNK_SIZE = 16384
MYSQLD_MSG_MAX = 512
# MYSQLD_ABI_*: how dispatch_command() takes its arguments
MYSQLD_ABI_PACKET = 1
MYSQLD_ABI_COM_DATA = 2

mysqld_query_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "start_ns" / cs.Int64ul,
    "conn" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "command" / cs.Int32ul,
    "total_len" / cs.Int32ul,
    "offset" / cs.Int32ul,
    "data_len" / cs.Int32ul,
    "abi" / cs.Int8ul,
    "reserved" / cs.Bytes(7),
    "comm" / cs.Bytes(16),
    "data" / cs.Bytes(cs.this.data_len),
)

mysqld_done_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "start_ns" / cs.Int64ul,
    "end_ns" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "command" / cs.Int32ul,
    "error" / cs.Int32ul,
    "raised" / cs.Int32ul,
    "stmt_id" / cs.Int32ul,
    "params" / cs.Int16ul,
    "columns" / cs.Int16ul,
    "retval" / cs.Int32sl,
    "returned" / cs.Int8ul,
    "prepared" / cs.Int8ul,
    "reserved" / cs.Int16ul,
    "msg_len" / cs.Int32ul,
    "reserved2" / cs.Int32ul,
    "msg" / cs.Bytes(cs.this.msg_len),
)

MYSQLD_QUERY = KernelStruct("mysqld_query_event_t", HEADER, mysqld_query_event_t,
                            "MYSQLD_EVENT_QUERY")
MYSQLD_DONE = KernelStruct("mysqld_done_event_t", HEADER, mysqld_done_event_t,
                           "MYSQLD_EVENT_DONE")
STRUCTS = {s.name: s for s in (MYSQLD_QUERY, MYSQLD_DONE)}

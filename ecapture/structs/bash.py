"""Event struct of the bash module, mirroring kern/bash.h field for field.

C declaration (kern/bash.h)::

    struct bash_readline_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 line_len;
        __u8 truncated; __u8 reserved[7];
        char comm[16];
        __u8 line[BASH_LINE_MAX];   // only line_len bytes are sent
    };
    struct bash_command_end_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 lines; __u32 how; __s32 status; __u32 reserved;
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "bash.h"
# Kinds are numbered per event map; bash's one kind keeps the number its first recordings
# used, when every module shared one enum.
EVENT_BASH_READLINE = 5
EVENT_BASH_COMMAND_END = 6
BASH_LINE_MAX = 1024

# bash_command_end_event_t.how
END_RETURNED = 1
END_NO_COMMAND = 2
END_EXIT = 3
END_EXEC = 4

bash_readline_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "uid" / cs.Int32ul,
    "line_len" / cs.Int32ul,
    "truncated" / cs.Int8ul,
    "reserved" / cs.Bytes(7),
    "comm" / cs.Bytes(16),
    "line" / cs.Bytes(cs.this.line_len),
)

bash_command_end_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "lines" / cs.Int32ul,
    "how" / cs.Int32ul,
    "status" / cs.Int32sl,
    "reserved" / cs.Int32ul,
)

BASH_READLINE = KernelStruct("bash_readline_event_t", HEADER, bash_readline_event_t,
                             "BASH_EVENT_READLINE")
BASH_COMMAND_END = KernelStruct("bash_command_end_event_t", HEADER, bash_command_end_event_t,
                                "BASH_EVENT_COMMAND_END")
STRUCTS = {s.name: s for s in (BASH_READLINE, BASH_COMMAND_END)}

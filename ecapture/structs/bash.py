"""Event struct of the bash module, mirroring kern/bash.h field for field.

C declaration (kern/bash.h)::

    struct bash_readline_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 line_len;
        __u8 truncated; __u8 reserved[7];
        char comm[16];
        __u8 line[BASH_LINE_MAX];   // only line_len bytes are sent
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "bash.h"
# Kinds are numbered per event map; bash's one kind keeps the number its first recordings
# used, when every module shared one enum.
EVENT_BASH_READLINE = 5
BASH_LINE_MAX = 1024

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

BASH_READLINE = KernelStruct("bash_readline_event_t", HEADER, bash_readline_event_t,
                             "BASH_EVENT_READLINE")
STRUCTS = {BASH_READLINE.name: BASH_READLINE}

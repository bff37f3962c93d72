"""Event struct of the zsh module, mirroring kern/zsh.h field for field.

C declaration (kern/zsh.h)::

    struct zsh_zleread_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns;
        __u32 uid; __u32 line_len;
        __u8 truncated; __u8 reserved[7];
        char comm[16];
        __u8 line[ZSH_LINE_MAX];   // only line_len bytes are sent, metafied
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "zsh.h"
EVENT_ZSH_ZLEREAD = 1
ZSH_LINE_MAX = 1024

zsh_zleread_event_t = cs.Struct(
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

ZSH_ZLEREAD = KernelStruct("zsh_zleread_event_t", HEADER, zsh_zleread_event_t,
                           "ZSH_EVENT_ZLEREAD")
STRUCTS = {ZSH_ZLEREAD.name: ZSH_ZLEREAD}

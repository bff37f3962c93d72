/* Kernel-to-user event struct of the "zsh" module.
 * Declared again in ecapture/structs/zsh.py with the same names, order and offsets. */
#ifndef ECAPTURE_ZSH_H
#define ECAPTURE_ZSH_H

#include "ecapture.h"

/* The one kind on the zsh module's map (kinds are numbered per map). */
#define ZSH_EVENT_ZLEREAD 1

/* Longer lines are cut here and flagged, as the bash module does. The bytes are zsh's
 * metafied text, so a line with many non-ASCII characters is cut a little earlier. */
#define ZSH_LINE_MAX 1024

/* One line that zleread() returned to zsh: the edit buffer as accepted, metafied (zsh's
 * internal escaping of NUL and of its token bytes), with the newline zleread() appends. User
 * space unmetafies it and drops that newline. */
struct zsh_zleread_event_t {
    __u32 kind;         /* ZSH_EVENT_ZLEREAD */
    __u32 pid;          /* tgid of the shell */
    __u64 timestamp_ns; /* bpf_ktime_get_ns() when zleread returned (CLOCK_MONOTONIC) */
    __u32 uid;
    __u32 line_len;     /* bytes of line[] that are valid and sent, no NUL */
    __u8 truncated;     /* 1 if the line was longer than ZSH_LINE_MAX - 1 bytes */
    __u8 reserved[7];
    char comm[ECAP_COMM_LEN];
    __u8 line[ZSH_LINE_MAX]; /* only line_len bytes are sent */
};

#endif

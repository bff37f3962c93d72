/* Kernel-to-user event struct of the "bash" module.
 * Declared again in ecapture/structs/bash.py with the same names, order and offsets. */
#ifndef ECAPTURE_BASH_H
#define ECAPTURE_BASH_H

#include "ecapture.h"

/* The one kind on the bash module's map (kinds are numbered per map; 5 is what bash's
 * first recordings used). */
#define BASH_EVENT_READLINE 5

/* Longer lines are cut here and flagged; one line per keystroke-typed command is small. */
#define BASH_LINE_MAX 1024

/* One line that readline() returned to an interactive shell: what the user typed, after
 * history expansion is still to come (readline returns the raw line). */
struct bash_readline_event_t {
    __u32 kind;         /* BASH_EVENT_READLINE */
    __u32 pid;          /* tgid of the shell */
    __u64 timestamp_ns; /* bpf_ktime_get_ns() when readline returned (CLOCK_MONOTONIC) */
    __u32 uid;
    __u32 line_len;     /* bytes of line[] that are valid and sent, no NUL */
    __u8 truncated;     /* 1 if the line was longer than BASH_LINE_MAX - 1 bytes */
    __u8 reserved[7];
    char comm[ECAP_COMM_LEN];
    __u8 line[BASH_LINE_MAX]; /* only line_len bytes are sent */
};

#endif

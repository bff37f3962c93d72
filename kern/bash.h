/* Kernel-to-user event structs of the "bash" module.
 * Declared again in ecapture/structs/bash.py with the same names, order and offsets. */
#ifndef ECAPTURE_BASH_H
#define ECAPTURE_BASH_H

#include "ecapture.h"

/* The kinds on the bash module's map (kinds are numbered per map; 5 is what bash's first
 * recordings used). */
#define BASH_EVENT_READLINE 5
#define BASH_EVENT_COMMAND_END 6

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

/* How the end of a command was seen (bash_command_end_event_t.how). */
#define BASH_END_RETURNED 1   /* execute_command() returned: status is the command's */
#define BASH_END_NO_COMMAND 2 /* the shell read on without executing (an empty line, a
                               * comment, a syntax error): no status */
#define BASH_END_EXIT 3       /* the shell exited (exit, end of input): its exit status */
#define BASH_END_EXEC 4       /* the shell replaced itself (exec): no status */

/* The end of the command made of the shell's last `lines` lines: sent when the shell goes
 * back to read the next command, exits or execs. Only for a shell that sent lines. */
struct bash_command_end_event_t {
    __u32 kind;         /* BASH_EVENT_COMMAND_END */
    __u32 pid;          /* tgid of the shell */
    __u64 timestamp_ns; /* when the end was seen (CLOCK_MONOTONIC) */
    __u32 lines;        /* readline events sent for this command, in order before this */
    __u32 how;          /* BASH_END_* */
    __s32 status;       /* exit status for RETURNED and EXIT, else 0 */
    __u32 reserved;
};

#endif

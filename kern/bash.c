/* ecapture "bash" module: the lines an interactive shell reads with readline().
 *
 * One uretprobe on readline() in the shell's binary (bash links readline statically) or in
 * libreadline (other programs). The return value is the line without its newline, or NULL
 * at end of input. Knobs arrive as -D cflags from ecapture/modules/bash.py.
 */
#include <uapi/linux/ptrace.h>
#include "bash.h"

#ifndef TARGET_PID
#define TARGET_PID 0
#endif
#ifndef TARGET_UID
#define TARGET_UID 0xffffffff
#endif

#ifndef USE_RINGBUF
#define USE_RINGBUF 1
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif

/* The same "events" buffer as every module (see openssl.c), and with a ring buffer the
 * "dropped" counter the live layer reads: bcc rewrites map calls in the main file only,
 * so this block cannot live in a header. */
#if USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(dropped, u64, 1);
static __always_inline void emit(void *ctx, void *data, u32 size) {
    if (events.ringbuf_output(data, size, 0) != 0) {
        u32 zero = 0;
        u64 *n = dropped.lookup(&zero);
        if (n)
            *n += 1;
    }
}
#else
BPF_PERF_OUTPUT(events);
static __always_inline void emit(void *ctx, void *data, u32 size) {
    events.perf_submit(ctx, data, size);
}
#endif

/* The event is larger than the 512-byte BPF stack: build it in a per-CPU slot. */
BPF_PERCPU_ARRAY(scratch, struct bash_readline_event_t, 1);

int bash_readline_return(struct pt_regs *ctx) {
    const char *line = (const char *)PT_REGS_RC(ctx);
    if (!line)
        return 0; /* end of input (Ctrl-D): nothing was typed */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (TARGET_PID != 0 && pid != TARGET_PID)
        return 0;
    if (TARGET_UID != 0xffffffff && uid != TARGET_UID)
        return 0;
    u32 zero = 0;
    struct bash_readline_event_t *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    long n = bpf_probe_read_user_str(ev->line, BASH_LINE_MAX, line);
    if (n <= 0)
        return 0;
    u32 len = (u32)n - 1; /* without the NUL */
    /* Re-bound for the verifier: [0, BASH_LINE_MAX - 1]. */
    if (len > BASH_LINE_MAX - 1)
        return 0;
    ev->kind = ECAP_EVENT_BASH_READLINE;
    ev->pid = pid;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->uid = uid;
    ev->line_len = len;
    /* A full buffer may have cut the line: look at the byte after what was copied. */
    char next = 0;
    if (len == BASH_LINE_MAX - 1)
        bpf_probe_read_user(&next, 1, line + len);
    ev->truncated = next != 0;
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    emit(ctx, ev, __builtin_offsetof(struct bash_readline_event_t, line) + len);
    return 0;
}

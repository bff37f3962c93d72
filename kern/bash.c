/* ecapture "bash" module: the lines an interactive shell reads with readline().
 *
 * One uretprobe on readline() in the shell's binary (bash links readline statically) or in
 * libreadline (other programs). The return value is the line without its newline, or NULL
 * at end of input. Compiled after kern/prelude.c, as one text: the event buffer, emit()
 * and the pid/uid filters (TARGET_PID, TARGET_UID, as -D flags) come from there.
 */
#include "bash.h"

/* The event is larger than the 512-byte BPF stack: build it in a per-CPU slot. */
BPF_PERCPU_ARRAY(scratch, struct bash_readline_event_t, 1);

int bash_readline_return(struct pt_regs *ctx) {
    const char *line = (const char *)PT_REGS_RC(ctx);
    if (!line)
        return 0; /* end of input (Ctrl-D): nothing was typed */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!traced(pid_tgid, uid))
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
    ev->kind = BASH_EVENT_READLINE;
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

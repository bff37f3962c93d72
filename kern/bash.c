/* ecapture "bash" module: the lines an interactive shell reads with readline(), and how
 * each command they make ended.
 *
 * One uretprobe on readline() in the shell's binary (bash links readline statically) or in
 * libreadline (other programs). The return value is the line without its newline, or NULL
 * at end of input. Compiled after kern/prelude.c, as one text: the event buffer, emit()
 * and the pid/uid filters (TARGET_PID, TARGET_UID, as -D flags) come from there.
 *
 * With BASH_COMMANDS (a bash whose own functions are hooked too), a command's end follows
 * its lines: bash reads a whole command (one line, or several for `for ...; do` on lines
 * of their own) in read_command(), runs it in execute_command() and calls read_command()
 * again. So the status is execute_command()'s return value, and the next read_command()
 * entry closes the command; exit_shell() and shell_execve() close the last one.
 */
#include "bash.h"

#ifndef BASH_COMMANDS
#define BASH_COMMANDS 0
#endif

/* The event is larger than the 512-byte BPF stack: build it in a per-CPU slot. */
BPF_PERCPU_ARRAY(scratch, struct bash_readline_event_t, SCRATCH_SLOTS);

#if BASH_COMMANDS
/* A shell's command in progress: how many lines it sent, and the status it returned. Only
 * shells that sent a line have an entry, so bash scripts (no readline) cost a lookup. */
struct bash_command_t {
    u32 lines;
    u32 returned;
    s32 status;
};
BPF_TABLE("lru_hash", u32, struct bash_command_t, bash_commands, 16384); /* pid -> command */

static __always_inline void end_command(struct pt_regs *ctx, u32 pid, u32 how, s32 status) {
    struct bash_command_t *cmd = bash_commands.lookup(&pid);
    if (!cmd || cmd->lines == 0)
        return; /* a command before the capture, or nothing typed since the last end */
    struct bash_command_end_event_t ev = {};
    ev.kind = BASH_EVENT_COMMAND_END;
    ev.pid = pid;
    ev.timestamp_ns = bpf_ktime_get_ns();
    ev.lines = cmd->lines;
    if (how == BASH_END_NO_COMMAND && cmd->returned) {
        how = BASH_END_RETURNED;
        status = cmd->status;
    }
    ev.how = how;
    ev.status = status;
    emit(ctx, &ev, sizeof(ev));
    cmd->lines = 0;
    cmd->returned = 0;
}

/* Entry of read_command(): the shell is back for the next command. */
int bash_read_command(struct pt_regs *ctx) {
    end_command(ctx, bpf_get_current_pid_tgid() >> 32, BASH_END_NO_COMMAND, 0);
    return 0;
}

/* Return of execute_command(): nested calls (eval, source, traps) return first, so the
 * last value before the next read_command() is the typed command's status. */
int bash_execute_command(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct bash_command_t *cmd = bash_commands.lookup(&pid);
    if (cmd && cmd->lines) {
        cmd->returned = 1;
        cmd->status = (s32)PT_REGS_RC(ctx);
    }
    return 0;
}

/* exit_shell(int status): `exit`, end of input, a fatal error. Forked subshells call it too,
 * under their own pid, which has no command. */
int bash_exit_shell(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    end_command(ctx, pid, BASH_END_EXIT, (s32)PT_REGS_PARM1(ctx));
    bash_commands.delete(&pid);
    return 0;
}

/* shell_execve(): the shell execs a program, in a forked child (no command there) or in
 * itself (`exec prog`), which never comes back to read_command(). */
int bash_shell_execve(struct pt_regs *ctx) {
    end_command(ctx, bpf_get_current_pid_tgid() >> 32, BASH_END_EXEC, 0);
    return 0;
}
#endif

int bash_readline_return(struct pt_regs *ctx) {
    const char *line = (const char *)PT_REGS_RC(ctx);
    if (!line)
        return 0; /* end of input (Ctrl-D): nothing was typed */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!traced(pid_tgid, uid))
        return 0;
    u32 slot = scratch_slot();
    struct bash_readline_event_t *ev = scratch.lookup(&slot);
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
    u32 sent = emit(ctx, ev, __builtin_offsetof(struct bash_readline_event_t, line) + len);
#if BASH_COMMANDS
    /* Count only lines user space will see: the command's end says how many to join. A
     * status set before this line (PROMPT_COMMAND runs before the prompt) is not its. */
    struct bash_command_t fresh = {};
    struct bash_command_t *cmd = bash_commands.lookup_or_try_init(&pid, &fresh);
    if (cmd) {
        cmd->lines += sent;
        cmd->returned = 0;
    }
#endif
    return 0;
}

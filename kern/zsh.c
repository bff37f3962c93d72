/* ecapture "zsh" module: the lines interactive zsh reads with its line editor, zle.
 *
 * One uretprobe on zleread() in the zle module (zsh/zle.so, which zsh loads on first use;
 * a uprobe is set on the file, so shells that load it later are caught too).
 *
 * Why zleread() and not zleentry(), the shell's exported entry into zle: zleentry(cmd, ...)
 * serves every ZLE_CMD_* request and only ZLE_CMD_READ returns a line. The others nest inside
 * a read: a job that ends while the user types makes zsh call zleentry(ZLE_CMD_TRASH) and
 * zleentry(ZLE_CMD_REFRESH) from its SIGCHLD handler, so the command an entry probe saved
 * for the thread is no longer the read's when the read returns (seen on Debian's zsh 5.9).
 * zleread() returns exactly one thing: the accepted line, or NULL at end of input or on
 * error, once per line, for the shell's prompts (PS1, PS2, select) and for vared. That is
 * the counterpart of readline() in the bash module, which also sees `read -e`.
 *
 * The line is zsh's metafied text with a newline appended; user space decodes it. Compiled
 * after kern/prelude.c, as one text: the event buffer, emit() and the pid/uid filters
 * (TARGET_PID, TARGET_UID, as -D flags) come from there.
 */
#include "zsh.h"

/* The event is larger than the 512-byte BPF stack: build it in a per-CPU slot. */
BPF_PERCPU_ARRAY(scratch, struct zsh_zleread_event_t, SCRATCH_SLOTS);

int zsh_zleread_return(struct pt_regs *ctx) {
    const char *line = (const char *)PT_REGS_RC(ctx);
    if (!line)
        return 0; /* end of input (Ctrl-D) or an interrupted read: nothing was accepted */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!traced(pid_tgid, uid))
        return 0;
    u32 slot = scratch_slot();
    struct zsh_zleread_event_t *ev = scratch.lookup(&slot);
    if (!ev)
        return 0;
    long n = bpf_probe_read_user_str(ev->line, ZSH_LINE_MAX, line);
    if (n <= 0)
        return 0;
    u32 len = (u32)n - 1; /* without the NUL */
    /* Re-bound for the verifier: [0, ZSH_LINE_MAX - 1]. */
    if (len > ZSH_LINE_MAX - 1)
        return 0;
    ev->kind = ZSH_EVENT_ZLEREAD;
    ev->pid = pid;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->uid = uid;
    ev->line_len = len;
    /* A full buffer may have cut the line: look at the bytes after what was copied. When
     * all that is missing is the newline zleread() appends, the typed line is whole. */
    char next[2] = {0, 0};
    if (len == ZSH_LINE_MAX - 1) {
        bpf_probe_read_user(&next[0], 1, line + len);
        if (next[0] == '\n')
            bpf_probe_read_user(&next[1], 1, line + len + 1);
    }
    ev->truncated = next[0] != 0 && !(next[0] == '\n' && next[1] == 0);
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    emit(ctx, ev, __builtin_offsetof(struct zsh_zleread_event_t, line) + len);
    return 0;
}

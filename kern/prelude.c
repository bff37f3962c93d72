/* The start of every ecapture eBPF program: its event buffer, emit() and the process
 * filters.
 *
 * bcc rewrites map calls (events.ringbuf_output(), table.lookup()) only in the text it
 * compiles, never in included headers: a map call in a header compiles into an instruction
 * the verifier refuses. So the live layer (ecapture/live/session.py) compiles this file
 * followed by the module's sources as ONE text, and every function that calls a map must
 * be in a .c file of that list, never in a .h. Headers hold structs and macros only.
 *
 * Knobs arrive as -D flags; Python never edits C text.
 */
#include <uapi/linux/ptrace.h>
#include "ecapture.h"

#ifndef USE_RINGBUF
#define USE_RINGBUF 1
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
#ifndef TARGET_PID
#define TARGET_PID 0 /* every process */
#endif
#ifndef TARGET_UID
#define TARGET_UID 0xffffffff /* every user */
#endif

/* One buffer per program carries every struct the program sends, each starting with its
 * kind: a ring buffer is one ordered queue across CPUs, so events keep their order. */
#if USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* A ring buffer has no lost-sample callback: count failed outputs ourselves. */
BPF_PERCPU_ARRAY(dropped, u64, 1);
/* Returns 1 when the event was sent, 0 when it was dropped (a module that counts what it
 * sent, as bash counts a command's lines, must not count a drop). */
static __always_inline u32 emit(void *ctx, void *data, u32 size) {
    /* 0 on success, a negative errno when the buffer is full: its sign bit is the drop.
     * Counting without a branch on it keeps chunk loops cheap for the verifier. */
    u64 failed = (u64)events.ringbuf_output(data, size, 0) >> 63;
    u32 zero = 0;
    u64 *n = dropped.lookup(&zero);
    if (n)
        *n += failed;
    return (u32)(failed ^ 1);
}
#else
BPF_PERF_OUTPUT(events);
static __always_inline u32 emit(void *ctx, void *data, u32 size) {
    return events.perf_submit(ctx, data, size) == 0;
}
#endif

/* Read user memory at an address computed as an integer. One call site for the helper:
 * bcc analyses every call of it with pointer arithmetic in its arguments, which made each
 * such call cost a noticeable part of a second to compile.
 *
 * It never faults a page in, so it fails (and zeroes dst) when any page of the range is
 * not mapped at that instant. Memory the process has just used can be in that state: a
 * huge-page collapse (khugepaged, MADV_COLLAPSE) unhooks a 2 MiB range's page table for
 * the whole copy, and where kernel code is preemptible (preempt=full or lazy, the only
 * models of x86 kernels since 7.0) the collapsing thread can lose the CPU inside that
 * window. A sleepable program could wait with bpf_copy_from_user(); bcc loads none.
 * bench/read_user_repro.py measures it. */
static __always_inline long read_user(void *dst, u32 size, u64 addr) {
    return bpf_probe_read_user(dst, size, (void *)addr);
}

/* Per-CPU scratch space for an event too big for the 512-byte stack. A per-CPU map value
 * is one program run's alone only while runs cannot interleave on a CPU. Where kernel code
 * is preemptible (preempt=full or lazy, the only models of x86 kernels since 7.0) a run can
 * lose the CPU half-way and a run for another thread then starts on the same CPU: with one
 * value per CPU it overwrote the first run's half-built event (another process's pid in a
 * data event). So a scratch map has SCRATCH_SLOTS values per CPU, and each lookup takes the
 * next in turn: two runs share one only if SCRATCH_SLOTS others started on that CPU while
 * one was preempted. Nothing is given back, so no path can leak a slot. */
#ifndef SCRATCH_SLOTS
#define SCRATCH_SLOTS 8 /* a power of two */
#endif
BPF_PERCPU_ARRAY(scratch_turn, u32, 1);

static __always_inline u32 scratch_slot(void) {
    u32 zero = 0;
    u32 *turn = scratch_turn.lookup(&zero);
    if (!turn)
        return 0;
    u32 slot = *turn & (SCRATCH_SLOTS - 1);
    *turn = slot + 1;
    return slot;
}

/* --pid: that process alone; with FOLLOW_CHILDREN also every process below it up to
 * FOLLOW_DEPTH generations (a container's init and what it starts later), through the
 * parents at the offsets the running kernel's BTF gave (KOFF_*: the headers bcc compiles
 * against may be another kernel's). Callers pass the current task's id. */
#ifndef FOLLOW_DEPTH
#define FOLLOW_DEPTH 8
#endif
static __always_inline int traced_pid(u32 tgid) {
    if (tgid == TARGET_PID)
        return 1;
#if defined(FOLLOW_CHILDREN) && defined(KOFF_TASK_REAL_PARENT) && defined(KOFF_TASK_TGID)
    u64 task = bpf_get_current_task();
#pragma unroll
    for (int i = 0; i < FOLLOW_DEPTH; i++) {
        u64 parent = 0;
        u32 ptgid = 0;
#if HAVE_PROBE_READ_USER
        bpf_probe_read_kernel(&parent, sizeof(parent), (void *)(task + KOFF_TASK_REAL_PARENT));
        bpf_probe_read_kernel(&ptgid, sizeof(ptgid), (void *)(parent + KOFF_TASK_TGID));
#else
        bpf_probe_read(&parent, sizeof(parent), (void *)(task + KOFF_TASK_REAL_PARENT));
        bpf_probe_read(&ptgid, sizeof(ptgid), (void *)(parent + KOFF_TASK_TGID));
#endif
        if (ptgid == TARGET_PID)
            return 1;
        if (ptgid <= 1 || parent == task)
            return 0;
        task = parent;
    }
#endif
    return 0;
}

static __always_inline int traced(u64 pid_tgid, u32 uid) {
    if (TARGET_PID != 0 && !traced_pid((u32)(pid_tgid >> 32)))
        return 0;
    if (TARGET_UID != 0xffffffff && uid != TARGET_UID)
        return 0;
    return 1;
}

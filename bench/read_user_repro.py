"""Does bpf_probe_read_user() copy a buffer that the traced thread has just used? Per call.

usage: sudo python bench/read_user_repro.py [--calls N] [--size BYTES] [--ret]
                                            [--collapse | --threads T]

A child python passes a SIZE-byte buffer (default 1 MiB) to libc's write() on /dev/null,
N times. A uprobe on write (with --ret its uretprobe, where ecapture reads SSL_write's
plaintext) reads that buffer twice: one byte of every 4 KiB page, then the whole buffer in
16 KiB chunks as ecapture does, into a per-CPU scratch slot as ecapture does. Every call
with a failed read or an overwritten slot gets a line (every call with -v); a summary
counts them. Exit status 1 when there was any.

Failed reads. The helper never faults a page in: it fails on any page not mapped present
at that instant. --collapse has a second thread of the child keep turning the buffer's
2 MiB range from small pages into a huge page (madvise MADV_COLLAPSE), the work khugepaged
does on its own wherever transparent huge pages are enabled. A collapse unhooks the
range's page table for the whole copy. Where kernel code is preemptible (preempt=full or
lazy; x86 kernels since 7.0 offer nothing else), the collapsing thread can lose the CPU in
that window and the probed thread reads a hole; so can the probe itself, mid-read. With
preempt=voluntary (6.12's default) neither happens on one CPU; on several CPUs it can,
rarely. The vmstat line counts the collapses (thp_collapse_alloc). The child refills the
range with small pages (MADV_NOHUGEPAGE, MADV_DONTNEED, a memset, MADV_HUGEPAGE) only
under a lock that no write holds, so a failed read here is a collapse in progress.

Overwritten slots. Preemptible kernel code also means a BPF program can lose the CPU
mid-run, and another run on the same CPU (--threads 2: the child's other writer) then
takes the same per-CPU scratch slot. The program notes its thread in the slot first and
checks it before submitting. --slots 4 gives each CPU four slots and each run a free one
(a per-CPU bitmap), which ends that. The program also fills 64 bytes of its own stack with
its thread id and checks them at the end: since 6.14 the x86 JIT gives a kprobe-type
program with that much stack a per-CPU private stack, and uprobe runs, unlike kprobe
runs, are not kept from interleaving on it, so two runs share their locals too (and the
bitmap, kept in locals, can then leak a slot: a run finding none sends nothing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecapture.live.bccload import load_bcc  # noqa: E402

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
struct res_t { u32 chunks; u32 pages; s64 first; u64 owner; u32 clobbered; u32 stack; };
struct scratch_t { struct res_t r; char b[CHUNK]; };
BPF_PERF_OUTPUT(out);
BPF_HASH(bufs, u32, u64);
BPF_PERCPU_ARRAY(scratch, struct scratch_t, SLOTS);
BPF_PERCPU_ARRAY(busy, u32, 1); /* with --slots: which of this CPU's slots are taken */

/* The counts live in a map value, unknown to the verifier: one state per turn. */
static int check(struct pt_regs *ctx, u64 buf) {
    u32 zero = 0, slot = 0;
    u32 *taken = busy.lookup(&zero);
    if (!taken)
        return 0;
    if (SLOTS > 1) {
        u32 was = *taken;
        while (slot < SLOTS && (was >> slot) & 1)
            slot++;
        if (slot >= SLOTS)
            return 0;
        *taken = was | (1u << slot);
    }
    struct scratch_t *s = scratch.lookup(&slot);
    if (!s)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    /* 64 bytes of stack, enough for the JIT to give the program a per-CPU private stack
     * (6.14+), checked at the end like the slot. */
    volatile u64 guard[8];
    for (int k = 0; k < 8; k++)
        guard[k] = id;
    s->r.chunks = s->r.pages = 0;
    s->r.first = -1;
    s->r.owner = id;
#pragma clang loop unroll(disable)
    for (u32 p = 0; p < SIZE / 4096; p++)
        if (bpf_probe_read_user(s->b, 1, (void *)(buf + p * 4096)) != 0) {
            if (s->r.first < 0)
                s->r.first = p * 4096;
            s->r.pages++;
        }
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < SIZE / CHUNK; i++)
        if (bpf_probe_read_user(s->b, CHUNK, (void *)(buf + i * CHUNK)) != 0)
            s->r.chunks++;
    /* Another run of this program took the per-CPU slot while this one was preempted. */
    /* Against a fresh id: a shared stack would have changed the saved one too. */
    u64 now = bpf_get_current_pid_tgid();
    s->r.clobbered = s->r.owner != now;
    u32 stack = 0;
    for (int k = 0; k < 8; k++)
        stack |= guard[k] != now;
    s->r.stack = stack;
    out.perf_submit(ctx, &s->r, sizeof(s->r));
    if (SLOTS > 1)
        *taken &= ~(1u << slot);
    return 0;
}

int on_entry(struct pt_regs *ctx) {
    if (bpf_get_current_pid_tgid() >> 32 != CHILD || PT_REGS_PARM3(ctx) != SIZE)
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 buf = PT_REGS_PARM2(ctx);
    if (!RET)
        return check(ctx, buf);
    bufs.update(&tid, &buf);
    return 0;
}

int on_return(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 *buf = bufs.lookup(&tid);
    if (!buf)
        return 0;
    u64 b = *buf;
    bufs.delete(&tid);
    return check(ctx, b);
}
"""

# The child starts writing when it reads a line: the probes are attached by then.
# Plain: bytes * n mallocs a new buffer and fills it for every call.
CHILD = """import os, sys, threading, time
n, size, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
fd, block = os.open("/dev/null", os.O_WRONLY), bytes(range(256))
def writes(k):
    for i in range(k):
        os.write(fd, block * (size // 256))
        time.sleep(0.05)
sys.stdin.readline()
for t in [threading.Thread(target=writes, args=(n // threads,)) for _ in range(threads)]:
    t.start()
"""

# --collapse: one 2 MiB-aligned range, written from while another thread collapses it.
# madvise advice numbers: 4 DONTNEED, 14 HUGEPAGE, 15 NOHUGEPAGE, 25 COLLAPSE.
CHILD_COLLAPSE = """import ctypes as C, os, sys, threading
n, size = int(sys.argv[1]), int(sys.argv[2])
libc, H, P, Z = C.CDLL(None, use_errno=True), 2 << 20, C.c_void_p, C.c_size_t
libc.mmap.restype, libc.mmap.argtypes = P, (P, Z, C.c_int, C.c_int, C.c_int, C.c_long)
libc.madvise.argtypes, libc.write.argtypes = (P, Z, C.c_int), (C.c_int, P, Z)
base = (libc.mmap(None, 2 * H, 3, 0x22, -1, 0) + H - 1) & ~(H - 1)
lock, done, fd = threading.Lock(), threading.Event(), os.open("/dev/null", os.O_WRONLY)
def collapse():
    while not done.is_set():
        with lock:
            for advice in (15, 4):
                libc.madvise(base, H, advice)
            C.memset(base, 90, H)
            libc.madvise(base, H, 14)
        libc.madvise(base, H, 25)
sys.stdin.readline()
threading.Thread(target=collapse, daemon=True).start()
for i in range(n):
    with lock:
        libc.write(fd, base, size)
done.set()
"""

VMSTAT = ("thp_fault_alloc", "thp_collapse_alloc", "compact_stall", "pgmigrate_success",
          "numa_hint_faults", "pswpout")


def vmstat() -> dict[str, int]:
    rows = (line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    return {k: int(v) for k, v in rows if k in VMSTAT}


def settings() -> str:
    """The transparent huge page mode and the preemption model, where the kernel says."""
    def read(path: str, unknown: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return unknown

    return (f"THP {read('/sys/kernel/mm/transparent_hugepage/enabled', '-')}; preempt "
            f"{read('/sys/kernel/debug/sched/preempt', '? (mount debugfs)')}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--size", type=int, default=1 << 20, help="bytes per call, 4 KiB multiple")
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--ret", action="store_true", help="read at write's return, not its entry")
    p.add_argument("--collapse", action="store_true",
                   help="a thread keeps collapsing the buffer's 2 MiB range (MADV_COLLAPSE)")
    p.add_argument("--threads", type=int, default=1,
                   help="writing threads in the child (without --collapse)")
    p.add_argument("--slots", type=int, default=1,
                   help="per-CPU scratch slots, each run taking a free one (default 1: shared)")
    p.add_argument("-v", "--verbose", action="store_true", help="a line for every call")
    a = p.parse_args()
    limit = 2 << 20 if a.collapse else 16 << 20
    if a.size <= 0 or a.size % 4096 or a.size % a.chunk or a.size > limit or a.calls <= 0 \
            or not 1 <= a.threads <= a.calls or not 1 <= a.slots <= 32:
        sys.exit(f"read_user_repro: --size must be a multiple of 4096 and of --chunk, at most "
                 f"{limit >> 20} MiB; --calls at least 1; --threads from 1 to --calls; "
                 "--slots from 1 to 32")
    if os.geteuid() != 0:
        sys.exit("read_user_repro: needs root (uprobes)")
    child = subprocess.Popen([sys.executable, "-c", CHILD_COLLAPSE if a.collapse else CHILD,
                              str(a.calls), str(a.size), str(a.threads)],
                             stdin=subprocess.PIPE, text=True)
    b = load_bcc().BPF(text=PROGRAM, cflags=[f"-DSIZE={a.size}ULL", f"-DCHUNK={a.chunk}",
                                             f"-DCHILD={child.pid}", f"-DRET={int(a.ret)}",
                                             f"-DSLOTS={a.slots}"])
    b.attach_uprobe(name="c", sym="write", fn_name="on_entry", pid=child.pid)
    if a.ret:
        b.attach_uretprobe(name="c", sym="write", fn_name="on_return", pid=child.pid)
    calls: list[tuple[int, int, int, int]] = []

    def seen(_cpu: int, data: int, _size: int) -> None:
        r = b["out"].event(data)
        calls.append((r.chunks, r.pages, r.clobbered, r.stack))
        if r.chunks or r.pages or r.clobbered or r.stack or a.verbose:
            first = f", first at +{r.first:#x}" if r.first >= 0 else ""
            clobbered = "; its per-CPU slot was overwritten" if r.clobbered else ""
            clobbered += "; its stack was overwritten" if r.stack else ""
            print(f"call {len(calls):4}: {r.chunks:3}/{a.size // a.chunk} chunks and "
                  f"{r.pages:4}/{a.size // 4096} pages failed{first}{clobbered}", flush=True)

    b["out"].open_perf_buffer(seen)
    before = vmstat()
    where = "uretprobe" if a.ret else "uprobe"
    print(f"kernel {os.uname().release}; {settings()}; {where} on write; "
          f"{'collapsing' if a.collapse else 'fresh'} buffer", flush=True)
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.close()
    while len(calls) < a.calls and (child.poll() is None or child.returncode == 0):
        b.perf_buffer_poll(timeout=200)
        if child.poll() is not None:
            b.perf_buffer_poll(timeout=200)
            break
    after = vmstat()
    bad = sum(1 for c in calls if c[0] or c[1])
    print(f"{bad}/{len(calls)} calls with failed reads; {sum(c[0] for c in calls)} chunks "
          f"and {sum(c[1] for c in calls)} pages failed; {sum(c[2] for c in calls)} calls "
          "had their per-CPU slot overwritten by another run, "
          f"{sum(c[3] for c in calls)} their stack")
    print("vmstat: " + ", ".join(f"{k} +{after[k] - before[k]}" for k in VMSTAT if k in after))
    return 1 if bad or any(c[2] or c[3] for c in calls) else 0


if __name__ == "__main__":
    sys.exit(main())

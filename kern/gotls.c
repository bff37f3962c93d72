/* ecapture "gotls" module: Go's crypto/tls, linked into every Go program.
 *
 * Compiled after kern/prelude.c and kern/tls.c, as one text (see prelude.c).
 *
 * Uprobes only, never uretprobes: a uretprobe replaces the return address on the stack,
 * and Go moves goroutine stacks, so the program would crash ("unexpected return pc").
 * A call's end is a uprobe on each RET instruction of the function instead; user space
 * finds them by disassembling the function (ecapture/gobinary.py).
 *
 * Go's register ABI (Go >= 1.17 on amd64, >= 1.18 on arm64) passes the arguments in
 * registers and keeps the running goroutine (its g) in a register of its own. A call is
 * keyed by (pid, g), not by thread: a goroutine that blocks in Read may resume on another
 * thread, whose RET must still find the call.
 *
 *   (*Conn).Write(b []byte) (int, error)     c, b.ptr, b.len in args 1-3: sent at entry
 *   (*Conn).Read(b []byte) (int, error)      the same; n in result 1: sent at a RET
 *   (*Config).writeKeyLog(label string, clientRandom, secret []byte) error
 *       label in args 2-3, clientRandom in 4-6, secret in 7-9
 *
 * The connection id is the *tls.Conn. Its fd is read from the net.Conn it wraps, and its
 * TLS version from it, through offsets that user space passes (GO_* below, from
 * ecapture/modules/gotls_offsets.py).
 */

#include "gotls.h"

#if defined(__x86_64__)
/* ABIInternal: RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11; g in R14. */
#define GO_ARG1(ctx) ((ctx)->ax)
#define GO_ARG2(ctx) ((ctx)->bx)
#define GO_ARG3(ctx) ((ctx)->cx)
#define GO_ARG4(ctx) ((ctx)->di)
#define GO_ARG5(ctx) ((ctx)->si)
#define GO_ARG7(ctx) ((ctx)->r9)
#define GO_ARG8(ctx) ((ctx)->r10)
#define GO_G(ctx) ((ctx)->r14)
#elif defined(__aarch64__)
/* ABIInternal: R0-R15 for arguments; g in R28. */
#define GO_ARG1(ctx) ((ctx)->regs[0])
#define GO_ARG2(ctx) ((ctx)->regs[1])
#define GO_ARG3(ctx) ((ctx)->regs[2])
#define GO_ARG4(ctx) ((ctx)->regs[3])
#define GO_ARG5(ctx) ((ctx)->regs[4])
#define GO_ARG7(ctx) ((ctx)->regs[6])
#define GO_ARG8(ctx) ((ctx)->regs[7])
#define GO_G(ctx) ((ctx)->regs[28])
#else
#error "gotls: Go's register ABI is known here for x86-64 and arm64 only"
#endif
#define GO_RESULT1(ctx) GO_ARG1(ctx)

/* tls.Conn starts with `conn net.Conn`, an interface: its data word points at the
 * *net.TCPConn (or UnixConn...), whose embedded net.conn starts with `fd *netFD`; in
 * netFD, poll.FD's Sysfd follows its fdMutex. */
#ifndef GO_CONN_DATA_OFFSET
#define GO_CONN_DATA_OFFSET 8
#endif
#ifndef GO_NETCONN_FD_OFFSET
#define GO_NETCONN_FD_OFFSET 0
#endif
#ifndef GO_NETFD_SYSFD_OFFSET
#define GO_NETFD_SYSFD_OFFSET 16
#endif
#ifndef GO_CONN_VERS_OFFSET
#define GO_CONN_VERS_OFFSET 72
#endif
#define GO_MAX_FD (1 << 24) /* a Sysfd beyond this is not an fd: the conn is not a netFD */

/* crypto/tls functions, as the ssl_data_event_t func field numbers them (FUNCS in
 * ecapture/modules/gotls.py). */
enum gotls_func {
    GOTLS_FUNC_READ = 0,
    GOTLS_FUNC_WRITE = 1,
};

struct go_call_key_t {
    u32 pid;
    u32 pad;
    u64 g;
};

/* LRU: a call whose RET never comes (a panic unwinding through it) must not hold its
 * slot for good, and a full table would silently refuse new calls. */
BPF_TABLE("lru_hash", struct go_call_key_t, struct tls_call_t, go_calls, 16384);
BPF_PERCPU_ARRAY(go_keylog_heap, struct go_keylog_event_t, SCRATCH_SLOTS);

/* The socket fd under a tls.Conn, or -1 when its net.Conn is not a netFD (a program may
 * wrap any net.Conn in TLS: a pipe, a proxy's stream). */
static __always_inline s32 go_conn_fd(u64 conn) {
    u64 data = 0, netfd = 0;
    s64 sysfd = -1;
    if (read_user(&data, sizeof(data), conn + GO_CONN_DATA_OFFSET) != 0 || data == 0)
        return -1;
    if (read_user(&netfd, sizeof(netfd), data + GO_NETCONN_FD_OFFSET) != 0 || netfd == 0)
        return -1;
    if (read_user(&sysfd, sizeof(sysfd), netfd + GO_NETFD_SYSFD_OFFSET) != 0)
        return -1;
    return sysfd >= 0 && sysfd < GO_MAX_FD ? (s32)sysfd : -1;
}

/* The connection's negotiated TLS version (0x0304 ...), 0 before its handshake. */
static __always_inline s32 go_conn_version(u64 conn) {
    u16 vers = 0;
    read_user(&vers, sizeof(vers), conn + GO_CONN_VERS_OFFSET);
    return vers;
}

static __always_inline int go_enter(struct pt_regs *ctx, u32 func) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u64 conn = GO_ARG1(ctx), buf = GO_ARG2(ctx);
    struct go_call_key_t key = {.pid = id >> 32, .pad = 0, .g = GO_G(ctx)};
    /* A call that must grow its stack first runs its entry twice: the prologue calls
     * morestack, which jumps back to the entry with the same arguments. The second entry
     * is the same call, already noted (and, for a write, already sent). */
    struct tls_call_t *known = go_calls.lookup(&key);
    if (known && known->conn == conn && known->buf == buf && known->func == func)
        return 0;
    struct tls_call_t call = {};
    call.conn = conn;
    call.buf = buf;
    call.start_ns = bpf_ktime_get_ns();
    call.func = func;
    go_calls.update(&key, &call);
    s32 fd = go_conn_fd(conn);
    if (fd >= 0) {
        struct tls_conn_key_t ck = {.pid = id >> 32, .pad = 0, .conn = conn};
        tls_note_fd(&ck, fd, 1);
    }
    /* A write is sent at its entry, all of b: its plaintext is there already, and its
     * RET may come late, the goroutine descheduled after the bytes left, so late that
     * the answer was read first (net/http's client reads and writes in two goroutines,
     * and its requests would pair with the wrong responses). (*Conn).Write writes all
     * of b unless the connection fails. */
    s64 len = (s64)GO_ARG3(ctx);
    if (func == GOTLS_FUNC_WRITE && len > 0)
        tls_send_data(ctx, &call, TLS_DIR_WRITE, (u64)len, go_conn_version(conn));
    return 0;
}

static __always_inline int go_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct go_call_key_t key = {.pid = id >> 32, .pad = 0, .g = GO_G(ctx)};
    struct tls_call_t *found = go_calls.lookup(&key);
    if (!found)
        return 0;
    struct tls_call_t call = *found;
    go_calls.delete(&key);
    s64 n = (s64)GO_RESULT1(ctx);
    if (call.func != GOTLS_FUNC_READ || n <= 0)
        return 0; /* a write was sent at its entry */
    tls_send_data(ctx, &call, TLS_DIR_READ, (u64)n, go_conn_version(call.conn));
    return 0;
}

int uprobe_go_read(struct pt_regs *ctx) { return go_enter(ctx, GOTLS_FUNC_READ); }
int uprobe_go_write(struct pt_regs *ctx) { return go_enter(ctx, GOTLS_FUNC_WRITE); }
int uprobe_go_ret(struct pt_regs *ctx) { return go_return(ctx); }

/* ---- keys ------------------------------------------------------------------------- */

int uprobe_go_write_key_log(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 slot = scratch_slot();
    struct go_keylog_event_t *ev = go_keylog_heap.lookup(&slot);
    if (!ev)
        return 0;
    ev->kind = GOTLS_EVENT_KEYLOG;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->unread = 0;
    ev->label_ptr = GO_ARG2(ctx);
    u64 label_len = GO_ARG3(ctx), random_len = GO_ARG5(ctx), secret_len = GO_ARG8(ctx);
    ev->label_len = label_len > 0xffff ? 0xffff : (u32)label_len;
    ev->client_random_len = random_len > 0xffff ? 0xffff : (u32)random_len;
    ev->secret_len = secret_len > 0xffff ? 0xffff : (u32)secret_len;
    /* Each read stops at its array; a longer field arrives cut and its length says so,
     * and a failed read leaves zeros: user space refuses both. */
    __builtin_memset(ev->label, 0, sizeof(ev->label));
    __builtin_memset(ev->client_random, 0, sizeof(ev->client_random));
    __builtin_memset(ev->secret, 0, sizeof(ev->secret));
    if (read_user(ev->label, label_len < GOTLS_LABEL_MAX ? label_len : GOTLS_LABEL_MAX,
                  GO_ARG2(ctx)) != 0)
        ev->unread |= GOTLS_UNREAD_LABEL;
    if (read_user(ev->client_random,
                  random_len < GOTLS_RANDOM_MAX ? random_len : GOTLS_RANDOM_MAX,
                  GO_ARG4(ctx)) != 0)
        ev->unread |= GOTLS_UNREAD_RANDOM;
    if (read_user(ev->secret, secret_len < GOTLS_SECRET_MAX ? secret_len : GOTLS_SECRET_MAX,
                  GO_ARG7(ctx)) != 0)
        ev->unread |= GOTLS_UNREAD_SECRET;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    emit(ctx, ev, sizeof(*ev));
    return 0;
}

/* The TLS family: what every TLS library module shares, written once.
 *
 * Compiled after kern/prelude.c and before the library's own file (kern/openssl.c, ...),
 * as one text: see prelude.c for why. The library's probes call these helpers:
 *   tls_call_enter()    at a read/write function's entry: remember buffer and connection;
 *   tls_call_take()     at its return: take that back;
 *   tls_call_active()   whether an outer exported function already noted this call;
 *   tls_send_data()     send what the call transferred, in TLS_CHUNK_SIZE chunks
 *                       (tls_data_event() and tls_send_chunk() for a sender of its own);
 *   tls_handshake_enter()/_exit() around the handshake, whose socket I/O tells the fd early.
 *
 * Which socket: instead of reading the library's own objects through version-specific
 * offsets, we watch which fd the thread does socket I/O on while it is inside a TLS call
 * and remember it per (pid, connection). That works for every library and version.
 *
 * Where the kernel allows (SOCKET_HOOKS=1: the sock:sock_{send,recv}_length tracepoints of
 * Linux 6.4+ and bpf_task_pt_regs()), that costs nothing to processes that do no socket
 * I/O: the fd is the current syscall's first argument, read from the task's saved user
 * registers. Elsewhere (SOCKET_HOOKS=0) the syscalls:* tracepoints do it, and every syscall
 * of the host pays for them.
 *
 * A library driven over memory buffers (node) does no socket I/O inside its calls: the
 * thread writes the call's ciphertext right after it returns, so a connection whose call
 * ended without a known fd takes the fd of the thread's next socket I/O (tls_pending).
 * With syscall tracepoints a read or write inside a call may be a pipe or a file: such a
 * guess is kept only until a known TCP socket says otherwise (tls_fd_t.sure).
 *
 * Which 4-tuple: sock:inet_sock_set_state sees every TCP connection reach ESTABLISHED with
 * its addresses, in the connecting thread for an active open (SYN_SENT) and in softirq for
 * a passive one. A passive open's owner is the first traced process doing I/O on it.
 */
#include <asm/unistd.h>
#include "tls.h"

/* From linux/socket.h and linux/in{,6}.h, spelled out: those headers cost bcc a second of
 * parsing at every start for four numbers and two layouts (ABI, stable forever). */
#define ECAP_AF_INET 2
#define ECAP_AF_INET6 10
struct ecap_sockaddr_in {
    u16 family;
    u16 port; /* network order */
    u8 addr[4];
};
struct ecap_sockaddr_in6 {
    u16 family;
    u16 port; /* network order */
    u32 flowinfo;
    u8 addr[16];
};

#ifndef MAX_CHUNKS
#define MAX_CHUNKS 256
#endif
#ifndef SOCKET_HOOKS
#define SOCKET_HOOKS 1
#endif

/* linux/tcp_states.h values; the tracepoint reports them as plain ints. */
#define ECAP_TCP_ESTABLISHED 1
#define ECAP_TCP_SYN_SENT 2
#define ECAP_TCP_SYN_RECV 3
#define ECAP_TCP_CLOSE 7
#define ECAP_IPPROTO_TCP 6

/* ---- plaintext ------------------------------------------------------------------ */

struct tls_call_t {
    u64 conn;    /* the library's connection object */
    u64 buf;
    u64 len_ptr; /* where a call stores its length, for APIs that return it that way */
    u64 start_ns;
    u32 func;
    u32 pad;
};

struct tls_conn_key_t {
    u32 pid;
    u32 pad;
    u64 conn;
};

BPF_HASH(tls_calls, u32, struct tls_call_t, 16384);           /* tid -> call in progress */
BPF_HASH(tls_handshakes, u32, u64, 16384);                    /* tid -> conn in a handshake */
/* Which fd a connection uses. `sure` is 0 for an fd seen only as a read or write inside a
 * call with syscall tracepoints: it may be a pipe or a file the library touched, and a
 * socket seen later replaces it. */
struct tls_fd_t {
    s32 fd;
    u32 sure;
};
BPF_TABLE("lru_hash", struct tls_conn_key_t, struct tls_fd_t, tls_fds, 65536); /* (pid, conn) */
BPF_PERCPU_ARRAY(tls_heap, struct ssl_data_event_t, SCRATCH_SLOTS); /* see scratch_slot() */
/* Libraries driven over memory buffers (node's TLS, many event loops) do their socket I/O
 * outside the library's calls: the thread writes the ciphertext a call produced right
 * after the call returns. A connection whose call ended with its fd still unknown waits
 * here for the thread's next socket I/O. */
BPF_HASH(tls_pending, u32, struct tls_conn_key_t, 16384); /* tid -> conn awaiting its fd */
/* (pid << 32 | fd) -> conn: when the socket closes, its fd may next name another
 * connection, and a connection object (SSL*) freed and reused must not inherit it. */
BPF_TABLE("lru_hash", u64, u64, tls_fd_conns, 65536);

static __always_inline void tls_note_fd(struct tls_conn_key_t *key, s32 fd, u32 sure) {
    struct tls_fd_t v = {.fd = fd, .sure = sure};
    if (!sure) {
        struct tls_fd_t *known = tls_fds.lookup(key);
        if (known)
            return; /* a guess never replaces what is known */
    }
    tls_fds.update(key, &v);
    u64 pidfd = ((u64)key->pid << 32) | (u32)fd;
    u64 conn = key->conn;
    tls_fd_conns.update(&pidfd, &conn);
}

static __always_inline void tls_await_fd(u64 id, u64 conn) {
    struct tls_conn_key_t key = {.pid = id >> 32, .pad = 0, .conn = conn};
    struct tls_fd_t *known = tls_fds.lookup(&key);
    if (known && known->sure)
        return;
    u32 tid = (u32)id;
    tls_pending.update(&tid, &key);
}

/* The connection a call of this thread left waiting for its fd, if any (taken). */
static __always_inline int tls_pending_take(struct tls_conn_key_t *out) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tls_conn_key_t *key = tls_pending.lookup(&tid);
    if (!key)
        return 0;
    *out = *key;
    tls_pending.delete(&tid);
    return 1;
}

static __always_inline void tls_forget_fd(u32 pid, s32 fd) {
    u64 pidfd = ((u64)pid << 32) | (u32)fd;
    u64 *conn = tls_fd_conns.lookup(&pidfd);
    if (!conn)
        return;
    struct tls_conn_key_t key = {.pid = pid, .pad = 0, .conn = *conn};
    struct tls_fd_t *known = tls_fds.lookup(&key);
    if (known && known->fd == fd)
        tls_fds.delete(&key);
    tls_fd_conns.delete(&pidfd);
}

static __always_inline void tls_call_enter(u64 conn, u64 buf, u64 len_ptr, u32 func) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return;
    u32 tid = (u32)id;
    struct tls_call_t call = {};
    call.conn = conn;
    call.buf = buf;
    call.len_ptr = len_ptr;
    call.start_ns = bpf_ktime_get_ns();
    call.func = func;
    tls_calls.update(&tid, &call);
}

/* Whether this thread is already inside the call (conn, buf, func): a library function
 * that jumps into another exported one (GnuTLS's record_send into record_send2) must not
 * make that one call two. */
static __always_inline int tls_call_active(u64 conn, u64 buf, u32 func) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tls_call_t *call = tls_calls.lookup(&tid);
    return call && call->func == func && call->conn == conn && call->buf == buf;
}

static __always_inline int tls_call_take(struct tls_call_t *out) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct tls_call_t *call = tls_calls.lookup(&tid);
    if (!call)
        return 0;
    *out = *call;
    tls_calls.delete(&tid);
    tls_await_fd(id, out->conn);
    return 1;
}

static __always_inline void tls_handshake_enter(u64 conn) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return;
    u32 tid = (u32)id;
    tls_handshakes.update(&tid, &conn);
}

static __always_inline void tls_handshake_exit(void) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 *conn = tls_handshakes.lookup(&tid);
    if (!conn)
        return;
    u64 c = *conn;
    tls_handshakes.delete(&tid);
    tls_await_fd(id, c);
}

/* One chunk of a call's plaintext; 0 when the kernel would not copy it. */
static __always_inline int tls_send_chunk(void *ctx, struct ssl_data_event_t *ev, u64 buf,
                                          u64 off, u32 n) {
    ev->offset = (u32)off;
    ev->data_len = n;
    if (read_user(ev->data, n, buf + off) != 0) {
        /* The kernel would not copy these bytes: a page of them was not mapped at that
         * instant, typically because a huge-page collapse (khugepaged) of their 2 MiB
         * range was in progress (read_user() in prelude.c). That lasts until the
         * collapsing thread runs again, so a retry would fail too. Say so with an empty
         * chunk at this offset and stop: user space keeps a call's bytes as one prefix
         * and reports the rest as missing, instead of the whole call vanishing. */
        ev->data_len = 0;
        emit(ctx, ev, offsetof(struct ssl_data_event_t, data));
        return 0;
    }
    emit(ctx, ev, offsetof(struct ssl_data_event_t, data) + n);
    return 1;
}

/* The per-CPU data event of a call, its header filled (pid, times, fd, ...); 0 if the
 * slot cannot be had. tls_send_data() and a library's own scatter/gather sender
 * (NSPR's PR_Writev) then send its chunks with tls_send_chunk(). */
static __always_inline struct ssl_data_event_t *tls_data_event(struct tls_call_t *call,
                                                               u8 direction, u64 total,
                                                               s32 version) {
    u32 slot = scratch_slot();
    struct ssl_data_event_t *ev = tls_heap.lookup(&slot);
    if (!ev)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    ev->kind = TLS_EVENT_DATA;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->start_ns = call->start_ns;
    ev->ssl = call->conn;
    ev->direction = direction;
    ev->func = call->func;
    ev->reserved = 0;
    ev->version = version;
    ev->total_len = total > 0xffffffffULL ? 0xffffffffU : (u32)total;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    struct tls_conn_key_t key = {.pid = id >> 32, .pad = 0, .conn = call->conn};
    struct tls_fd_t *fd = tls_fds.lookup(&key);
    ev->fd = fd ? fd->fd : -1;
    return ev;
}

static __always_inline void tls_send_data(void *ctx, struct tls_call_t *call, u8 direction,
                                          u64 total, s32 version) {
    if (total == 0)
        return;
    struct ssl_data_event_t *ev = tls_data_event(call, direction, total, version);
    if (!ev)
        return;
    u64 buf = call->buf;
#define TLS_SEND_CHUNK(off, n) tls_send_chunk(ctx, ev, buf, off, n)
    ECAP_FOR_PIECES(total, TLS_CHUNK_SIZE, MAX_CHUNKS, TLS_SEND_CHUNK)
#undef TLS_SEND_CHUNK
}

/* The thread is doing I/O on socket fd: if it is inside a TLS call or handshake, that is
 * the call's socket. */
static __always_inline int tls_in_call(struct tls_conn_key_t *key) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    key->pid = id >> 32;
    key->pad = 0;
    struct tls_call_t *call = tls_calls.lookup(&tid);
    if (call) {
        key->conn = call->conn;
        return 1;
    }
    u64 *conn = tls_handshakes.lookup(&tid);
    if (!conn)
        return 0;
    key->conn = *conn;
    return 1;
}

/* ---- connections ------------------------------------------------------------------ */

struct owner_t {
    u32 pid;
    u32 tid;
    u32 uid;
    s32 fd;
    char comm[ECAP_COMM_LEN];
};

struct established_t {
    u64 sock;
    u16 family;
    u16 lport;
    u16 rport;
    u16 pad;
    u8 laddr[16];
    u8 raddr[16];
};

BPF_TABLE("lru_hash", u64, struct owner_t, connecting, 16384); /* sock -> who connects */
BPF_TABLE("lru_hash", u64, struct owner_t, tracked, 65536);    /* sock -> reported owner */

static __always_inline void fill_owner(struct owner_t *o, u64 id, s32 fd) {
    o->pid = id >> 32;
    o->tid = (u32)id;
    o->uid = (u32)bpf_get_current_uid_gid();
    o->fd = fd;
    bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline void emit_conn(void *ctx, struct owner_t *o, u8 kind, u64 sock,
                                      struct established_t *est) {
    struct conn_event_t ev = {};
    ev.kind = TLS_EVENT_CONN;
    ev.pid = o->pid;
    ev.tid = o->tid;
    ev.uid = o->uid;
    ev.fd = o->fd;
    ev.conn = kind;
    ev.sock = sock;
    ev.timestamp_ns = bpf_ktime_get_ns();
    __builtin_memcpy(ev.comm, o->comm, sizeof(ev.comm));
    if (est) {
        ev.family = est->family;
        ev.lport = est->lport;
        ev.rport = est->rport;
        __builtin_memcpy(ev.laddr, est->laddr, 16);
        __builtin_memcpy(ev.raddr, est->raddr, 16);
    }
    emit(ctx, &ev, sizeof(ev));
}

/* The tracepoint's addresses (a macro: bcc declares the tracepoint's args struct only
 * at its TRACEPOINT_PROBE). */
#define TUPLE_OF(est, args)                                           \
    do {                                                              \
        (est)->family = (args)->family;                               \
        (est)->lport = (args)->sport;                                 \
        (est)->rport = (args)->dport;                                 \
        if ((args)->family == ECAP_AF_INET) {                              \
            __builtin_memcpy((est)->laddr, (args)->saddr, 4);         \
            __builtin_memcpy((est)->raddr, (args)->daddr, 4);         \
        } else {                                                      \
            __builtin_memcpy((est)->laddr, (args)->saddr_v6, 16);     \
            __builtin_memcpy((est)->raddr, (args)->daddr_v6, 16);     \
        }                                                             \
    } while (0)

#if SOCKET_HOOKS
/* ---- socket I/O without syscall tracepoints --------------------------------------- */

/* A passive open completes in softirq, where its owner is unknown: kept here until the
 * first traced process does I/O on it. */
BPF_TABLE("lru_hash", u64, struct established_t, passive, 16384); /* sock -> tuple */

#if defined(__TARGET_ARCH_arm64)
#define ECAP_SYSCALL_NR(regs) ((regs)->syscallno)
#define ECAP_SYSCALL_ARG0(regs) ((regs)->orig_x0)
#else
#define ECAP_SYSCALL_NR(regs) ((regs)->orig_ax)
#define ECAP_SYSCALL_ARG0(regs) ((regs)->di)
#endif

/* The syscall the current thread is in, and its first argument, from the user registers
 * the kernel saved on entry. -1 outside a syscall (io_uring workers, softirq). */
static __always_inline long current_syscall(long *arg0) {
    struct task_struct *task = bpf_get_current_task_btf();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
    long nr = -1;
    bpf_probe_read_kernel(&nr, sizeof(nr), &ECAP_SYSCALL_NR(regs));
    bpf_probe_read_kernel(arg0, sizeof(*arg0), &ECAP_SYSCALL_ARG0(regs));
    return nr;
}

/* The fd of the socket I/O syscall the thread is in; -1 if it is not one whose first
 * argument is the socket. */
static __always_inline s32 io_syscall_fd(void) {
    long fd = -1;
    switch (current_syscall(&fd)) {
    case __NR_read:
    case __NR_write:
    case __NR_readv:
    case __NR_writev:
    case __NR_sendto:
    case __NR_recvfrom:
    case __NR_sendmsg:
    case __NR_recvmsg:
    case __NR_sendmmsg:
    case __NR_recvmmsg:
        return (s32)fd;
    }
    return -1;
}

static __always_inline void socket_io(void *ctx, u64 sock, u16 protocol) {
    if (protocol != ECAP_IPPROTO_TCP)
        return;
    struct established_t *est = passive.lookup(&sock);
    struct tls_conn_key_t key = {};
    int in_call = tls_in_call(&key);
    if (!est && !in_call) {
        /* The common case: a few lookups and out. */
        if (tls_pending_take(&key)) {
            s32 fd = io_syscall_fd();
            if (fd >= 0)
                tls_note_fd(&key, fd, 1);
        }
        return;
    }
    s32 fd = io_syscall_fd();
    if (est) {
        u64 id = bpf_get_current_pid_tgid();
        if (traced(id, (u32)bpf_get_current_uid_gid())) {
            struct owner_t o = {};
            fill_owner(&o, id, fd);
            struct established_t copy = *est;
            tracked.update(&sock, &o);
            passive.delete(&sock);
            emit_conn(ctx, &o, CONN_ACCEPT, sock, &copy);
        }
    }
    if (in_call && fd >= 0)
        tls_note_fd(&key, fd, 1);
}

TRACEPOINT_PROBE(sock, sock_send_length) {
    socket_io(args, (u64)args->sk, args->protocol);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length) {
    socket_io(args, (u64)args->sk, args->protocol);
    return 0;
}

/* connect(2) is the syscall the connecting thread is in at SYN_SENT. */
static __always_inline s32 connect_fd(void) {
    long fd = -1;
    return current_syscall(&fd) == __NR_connect ? (s32)fd : -1;
}

static __always_inline void passive_established(u64 sock, struct established_t *est) {
    passive.update(&sock, est);
}

static __always_inline void forget_passive(u64 sock) {
    passive.delete(&sock);
}

static __always_inline void socket_owned(u32 pid, s32 fd) {}
static __always_inline void socket_closed(u32 pid, s32 fd) { tls_forget_fd(pid, fd); }

#else
/* ---- socket I/O with syscall tracepoints (kernels before 6.4) --------------------- */

#ifdef KOFF_TASK_FILES
/* The struct sock behind fd of the current task, 0 if it cannot be told: the file table's
 * members are at offsets the kernel's BTF gave (KOFF_*, see ecapture/live/btf.py), so no
 * header is parsed. A file that is not a socket gives a pointer that names no socket we
 * track, and the lookup after it misses. */
static __always_inline u64 sock_of_fd(s32 fd) {
    u64 task = (u64)bpf_get_current_task();
    u64 files = 0, fdt = 0, fds = 0, file = 0, socket = 0, sk = 0;
    u32 max_fds = 0;
    if (fd < 0)
        return 0;
    bpf_probe_read_kernel(&files, sizeof(files), (void *)(task + KOFF_TASK_FILES));
    if (!files)
        return 0;
    bpf_probe_read_kernel(&fdt, sizeof(fdt), (void *)(files + KOFF_FILES_FDT));
    if (!fdt)
        return 0;
    bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (void *)(fdt + KOFF_FDT_MAX_FDS));
    if ((u32)fd >= max_fds)
        return 0;
    bpf_probe_read_kernel(&fds, sizeof(fds), (void *)(fdt + KOFF_FDT_FD));
    if (!fds)
        return 0;
    bpf_probe_read_kernel(&file, sizeof(file), (void *)(fds + (u64)fd * sizeof(u64)));
    if (!file)
        return 0;
    bpf_probe_read_kernel(&socket, sizeof(socket), (void *)(file + KOFF_FILE_PRIVATE_DATA));
    if (!socket)
        return 0;
    bpf_probe_read_kernel(&sk, sizeof(sk), (void *)(socket + KOFF_SOCKET_SK));
    return sk;
}
#else
static __always_inline u64 sock_of_fd(s32 fd) { return 0; }
#endif

struct peer_key_t {
    u16 family;
    u16 rport;
    u8 raddr[16];
};

BPF_HASH(connect_fds, u32, s32, 16384);  /* tid -> fd in connect() */
BPF_HASH(accept_addrs, u32, u64, 16384); /* tid -> user sockaddr* */
BPF_TABLE("lru_hash", struct peer_key_t, struct established_t, accepted, 16384);
BPF_TABLE("lru_hash", u64, struct established_t, accepted_socks, 16384); /* sock -> tuple */

/* The TCP sockets of traced processes, known from their connect() and accept(): a
 * syscall's fd may be a file (node logs to stdout between its TLS calls and its socket
 * writes), and only a socket may end a connection's wait for its fd. */
BPF_TABLE("lru_hash", u64, u8, tcp_fds, 65536); /* pid << 32 | fd */

static __always_inline void socket_owned(u32 pid, s32 fd) {
    u64 pidfd = ((u64)pid << 32) | (u32)fd;
    u8 one = 1;
    if (fd >= 0)
        tcp_fds.update(&pidfd, &one);
}

static __always_inline void socket_closed(u32 pid, s32 fd) {
    u64 pidfd = ((u64)pid << 32) | (u32)fd;
    tcp_fds.delete(&pidfd);
    tls_forget_fd(pid, fd);
}

/* sure: the syscall works on sockets only (sendto, recvmsg, ...). */
static __always_inline void note_fd(long fd, u32 sure) {
    u64 id = bpf_get_current_pid_tgid();
    u64 pidfd = (id & 0xffffffff00000000ULL) | (u32)fd;
    struct tls_conn_key_t key = {};
    s32 v = (s32)fd;
    if (tls_in_call(&key)) {
        tls_note_fd(&key, v, sure || tcp_fds.lookup(&pidfd));
        return;
    }
    u32 tid = (u32)id;
    if (!tls_pending.lookup(&tid))
        return;
    if ((sure || tcp_fds.lookup(&pidfd)) && tls_pending_take(&key))
        tls_note_fd(&key, v, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) { note_fd(args->fd, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { note_fd(args->fd, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { note_fd(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { note_fd(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { note_fd(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { note_fd(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { note_fd(args->fd, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { note_fd(args->fd, 0); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 tid = (u32)id;
    s32 fd = (s32)args->fd;
    connect_fds.update(&tid, &fd);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    connect_fds.delete(&tid);
    return 0;
}

static __always_inline s32 connect_fd(void) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    s32 *fd = connect_fds.lookup(&tid);
    return fd ? *fd : -2; /* -2: not inside a traced connect() */
}

/* accept() learns the peer address from what it returns to the caller; the passive open
 * is found by that address. */
static __always_inline void passive_established(u64 sock, struct established_t *est) {
    struct peer_key_t key = {};
    key.family = est->family;
    key.rport = est->rport;
    __builtin_memcpy(key.raddr, est->raddr, 16);
    accepted.update(&key, est);
    accepted_socks.update(&sock, est);
}

static __always_inline void forget_passive(u64 sock) {
    accepted_socks.delete(&sock);
}

static __always_inline int accept_enter(u64 addr) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 tid = (u32)id;
    accept_addrs.update(&tid, &addr);
    return 0;
}

static __always_inline int accept_exit(void *ctx, long ret) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 *addrp = accept_addrs.lookup(&tid);
    if (!addrp)
        return 0;
    u64 addr = *addrp;
    accept_addrs.delete(&tid);
    if (ret < 0)
        return 0;

    struct owner_t o = {};
    fill_owner(&o, id, (s32)ret);
    socket_owned(o.pid, o.fd);
    /* The accepted socket itself, where the file table tells it: exact even when the
     * caller asked for no address (libuv does not), and its close is tracked. */
    u64 sk = sock_of_fd((s32)ret);
    struct established_t *by_sock = sk ? accepted_socks.lookup(&sk) : 0;
    if (by_sock) {
        struct established_t copy = *by_sock;
        struct peer_key_t peer = {};
        peer.family = copy.family;
        peer.rport = copy.rport;
        __builtin_memcpy(peer.raddr, copy.raddr, 16);
        accepted.delete(&peer);
        accepted_socks.delete(&sk);
        tracked.update(&sk, &o);
        emit_conn(ctx, &o, CONN_ACCEPT, sk, &copy);
        return 0;
    }
    struct peer_key_t key = {};
    if (addr != 0) {
        /* The kernel has just written the peer's address into the caller's buffer. */
        read_user(&key.family, sizeof(key.family), addr);
        if (key.family == ECAP_AF_INET) {
            struct ecap_sockaddr_in sin = {};
            read_user(&sin, sizeof(sin), addr);
            key.rport = __builtin_bswap16(sin.port);
            __builtin_memcpy(key.raddr, sin.addr, 4);
        } else if (key.family == ECAP_AF_INET6) {
            struct ecap_sockaddr_in6 sin6 = {};
            read_user(&sin6, sizeof(sin6), addr);
            key.rport = __builtin_bswap16(sin6.port);
            __builtin_memcpy(key.raddr, sin6.addr, 16);
        } else {
            key.family = 0;
        }
    }
    struct established_t *est = key.family ? accepted.lookup(&key) : 0;
    if (est) {
        struct established_t copy = *est;
        u64 sock = copy.sock;
        tracked.update(&sock, &o);
        accepted.delete(&key);
        emit_conn(ctx, &o, CONN_ACCEPT, sock, &copy);
    } else if (key.family) {
        /* Not seen being established (older than the capture): the peer is known. */
        struct established_t peer = {};
        peer.family = key.family;
        peer.rport = key.rport;
        __builtin_memcpy(peer.raddr, key.raddr, 16);
        emit_conn(ctx, &o, CONN_ACCEPT, 0, &peer);
    } else {
        /* accept(fd, NULL, NULL): user space looks the addresses up in /proc. */
        emit_conn(ctx, &o, CONN_ACCEPT, 0, 0);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return accept_enter((u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return accept_enter((u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args, args->ret); }
#endif

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != ECAP_IPPROTO_TCP)
        return 0;
    u64 sock = (u64)args->skaddr;
    int newstate = args->newstate;
    int oldstate = args->oldstate;

    if (newstate == ECAP_TCP_SYN_SENT) {
        /* tcp_v4_connect/tcp_v6_connect run in the connecting thread: who owns it is known
         * here, the addresses only once the handshake completes. */
        u64 id = bpf_get_current_pid_tgid();
        if (!traced(id, (u32)bpf_get_current_uid_gid()))
            return 0;
        s32 fd = connect_fd();
        if (fd == -2)
            return 0;
        struct owner_t o = {};
        fill_owner(&o, id, fd);
        connecting.update(&sock, &o);
        return 0;
    }
    if (newstate == ECAP_TCP_ESTABLISHED && oldstate == ECAP_TCP_SYN_SENT) {
        /* Often softirq context: the current task is not the owner; use the saved one. */
        struct owner_t *o = connecting.lookup(&sock);
        if (!o)
            return 0;
        struct owner_t saved = *o;
        struct established_t est = {};
        TUPLE_OF(&est, args);
        tracked.update(&sock, &saved);
        connecting.delete(&sock);
        socket_owned(saved.pid, saved.fd);
        emit_conn(args, &saved, CONN_CONNECT, sock, &est);
        return 0;
    }
    if (newstate == ECAP_TCP_ESTABLISHED && oldstate == ECAP_TCP_SYN_RECV) {
        struct established_t est = {};
        est.sock = sock;
        TUPLE_OF(&est, args);
        passive_established(sock, &est);
        return 0;
    }
    if (newstate == ECAP_TCP_CLOSE) {
        connecting.delete(&sock);
        forget_passive(sock);
        struct owner_t *o = tracked.lookup(&sock);
        if (!o)
            return 0;
        struct owner_t saved = *o;
        struct established_t est = {};
        est.family = args->family;
        tracked.delete(&sock);
        socket_closed(saved.pid, saved.fd);
        emit_conn(args, &saved, CONN_CLOSE, sock, &est);
    }
    return 0;
}

#if WATCH_EXEC
/* A traced process started a program. What it will map is not mapped yet (the dynamic
 * loader runs after this): user space reads it from /proc next, while the loader works. */
TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 id = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!traced(id, uid))
        return 0;
    struct exec_event_t ev = {};
    ev.kind = TLS_EVENT_EXEC;
    ev.pid = id >> 32;
    ev.timestamp_ns = bpf_ktime_get_ns();
    ev.uid = uid;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    emit(args, &ev, sizeof(ev));
    return 0;
}
#endif

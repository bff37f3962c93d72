/* ecapture "tls" module: OpenSSL plaintext and the TCP connections it travels on.
 *
 * Plaintext: uprobes on entry and return of SSL_read, SSL_write, SSL_read_ex and
 * SSL_write_ex. The entry stashes the buffer per thread; the return copies what the call
 * really transferred, split into SSL_CHUNK_SIZE chunks so nothing is truncated.
 *
 * Which socket: instead of reading SSL->rbio->num through version-specific offsets, we
 * watch which fd the thread passes to read/write/send/recv syscalls while it is inside an
 * SSL call and remember it per (pid, SSL*). That works for every OpenSSL version.
 *
 * Which 4-tuple: tracepoints only (no kprobes), see conn_event_t in openssl.h.
 *
 * Knobs arrive as -D cflags from ecapture/modules/openssl.py; Python never edits this text.
 */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <uapi/linux/pkt_cls.h>
#include "openssl.h"

#ifndef USE_RINGBUF
#define USE_RINGBUF 1
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
#ifndef TARGET_PID
#define TARGET_PID 0
#endif
#ifndef TARGET_UID
#define TARGET_UID 0xffffffff
#endif
#ifndef SSL_VERSION_OFFSET
#define SSL_VERSION_OFFSET -1
#endif
#ifndef MAX_CHUNKS
#define MAX_CHUNKS 256
#endif

/* linux/tcp_states.h values; the tracepoint reports them as plain ints. */
#define ECAP_TCP_ESTABLISHED 1
#define ECAP_TCP_SYN_SENT 2
#define ECAP_TCP_SYN_RECV 3
#define ECAP_TCP_CLOSE 7
#define ECAP_IPPROTO_TCP 6

#if USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* A ring buffer has no lost-sample callback: count failed outputs ourselves. */
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

static __always_inline int traced(u64 pid_tgid, u32 uid) {
    if (TARGET_PID != 0 && (u32)(pid_tgid >> 32) != TARGET_PID)
        return 0;
    if (TARGET_UID != 0xffffffff && uid != TARGET_UID)
        return 0;
    return 1;
}

/* ---- plaintext ------------------------------------------------------------------ */

struct ssl_call_t {
    u64 ssl;
    u64 buf;
    u64 len_ptr; /* size_t *readbytes / *written of the _ex calls */
    u64 start_ns;
    u32 func;
};

struct ssl_key_t {
    u32 pid;
    u32 pad;
    u64 ssl;
};

BPF_HASH(ssl_calls, u32, struct ssl_call_t, 16384);     /* tid -> call in progress */
BPF_HASH(handshakes, u32, u64, 16384);                  /* tid -> SSL* in SSL_do_handshake */
BPF_TABLE("lru_hash", struct ssl_key_t, s32, ssl_fds, 65536); /* (pid, SSL*) -> fd */
BPF_PERCPU_ARRAY(ssl_heap, struct ssl_data_event_t, 1); /* too big for the 512-byte stack */

#ifdef CAPTURE_KEYS
/* Keys: once per connection, at its first successful read or write. An SSL* is reused
 * after SSL_free, so a connection is (pid, SSL*) plus its client random. */
BPF_TABLE("lru_hash", struct ssl_key_t, u64, keys_sent, 65536);
BPF_PERCPU_ARRAY(key_heap, struct master_secret_event_t, 1);

static __always_inline void emit_keys(void *ctx, u64 pid_tgid, u64 ssl) {
    struct ssl_key_t key = {.pid = pid_tgid >> 32, .pad = 0, .ssl = ssl};
    u64 random_head = 0;
    bpf_probe_read_user(&random_head, sizeof(random_head), (void *)(ssl + OFF_CLIENT_RANDOM));
    u64 *sent = keys_sent.lookup(&key);
    if (sent && *sent == random_head)
        return;
    keys_sent.update(&key, &random_head);
    u32 zero = 0;
    struct master_secret_event_t *ev = key_heap.lookup(&zero);
    if (!ev)
        return;
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->kind = ECAP_EVENT_MASTER_SECRET;
    ev->pid = pid_tgid >> 32;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->ssl = ssl;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    bpf_probe_read_user(&ev->version, sizeof(ev->version), (void *)(ssl + SSL_VERSION_OFFSET));
    bpf_probe_read_user(ev->client_random, sizeof(ev->client_random),
                        (void *)(ssl + OFF_CLIENT_RANDOM));
    u64 session = 0;
    bpf_probe_read_user(&session, sizeof(session), (void *)(ssl + OFF_SESSION));
    if (session) {
        bpf_probe_read_user(ev->master_key, sizeof(ev->master_key),
                            (void *)(session + OFF_SESSION_MASTER_KEY));
        u64 cipher = 0;
        bpf_probe_read_user(&cipher, sizeof(cipher), (void *)(session + OFF_SESSION_CIPHER));
        if (cipher)
            bpf_probe_read_user(&ev->cipher_id, sizeof(ev->cipher_id),
                                (void *)(cipher + OFF_CIPHER_ID));
    }
    bpf_probe_read_user(ev->handshake_secret, 64, (void *)(ssl + OFF_HANDSHAKE_SECRET));
    bpf_probe_read_user(ev->handshake_traffic_hash, 64,
                        (void *)(ssl + OFF_HANDSHAKE_TRAFFIC_HASH));
    bpf_probe_read_user(ev->client_app_traffic_secret, 64,
                        (void *)(ssl + OFF_CLIENT_APP_TRAFFIC_SECRET));
    bpf_probe_read_user(ev->server_app_traffic_secret, 64,
                        (void *)(ssl + OFF_SERVER_APP_TRAFFIC_SECRET));
    bpf_probe_read_user(ev->exporter_master_secret, 64,
                        (void *)(ssl + OFF_EXPORTER_MASTER_SECRET));
    emit(ctx, ev, sizeof(*ev));
}
#endif

static __always_inline int ssl_enter(struct pt_regs *ctx, u32 func) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 tid = (u32)id;
    struct ssl_call_t call = {};
    call.ssl = PT_REGS_PARM1(ctx);
    call.buf = PT_REGS_PARM2(ctx);
    if (func == SSL_FUNC_READ_EX || func == SSL_FUNC_WRITE_EX)
        call.len_ptr = PT_REGS_PARM4(ctx);
    call.start_ns = bpf_ktime_get_ns();
    call.func = func;
    ssl_calls.update(&tid, &call);
    return 0;
}

static __always_inline int ssl_return(struct pt_regs *ctx, u8 direction) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct ssl_call_t *callp = ssl_calls.lookup(&tid);
    if (!callp)
        return 0;
    struct ssl_call_t call = *callp;
    ssl_calls.delete(&tid);

    u64 total = 0;
    if (call.func == SSL_FUNC_READ_EX || call.func == SSL_FUNC_WRITE_EX) {
        /* int SSL_read_ex(SSL *, void *, size_t, size_t *readbytes): 1 on success */
        if ((int)PT_REGS_RC(ctx) != 1 || call.len_ptr == 0)
            return 0;
        bpf_probe_read_user(&total, sizeof(total), (void *)call.len_ptr);
    } else {
        int ret = (int)PT_REGS_RC(ctx);
        if (ret <= 0)
            return 0;
        total = (u64)ret;
    }
    if (total == 0)
        return 0;
#ifdef CAPTURE_KEYS
    emit_keys(ctx, id, call.ssl);
#endif

    u32 zero = 0;
    struct ssl_data_event_t *ev = ssl_heap.lookup(&zero);
    if (!ev)
        return 0;
    ev->kind = ECAP_EVENT_SSL_DATA;
    ev->pid = id >> 32;
    ev->tid = tid;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->start_ns = call.start_ns;
    ev->ssl = call.ssl;
    ev->direction = direction;
    ev->func = call.func;
    ev->reserved = 0;
    ev->total_len = total > 0xffffffffULL ? 0xffffffffU : (u32)total;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));

    struct ssl_key_t key = {.pid = id >> 32, .pad = 0, .ssl = call.ssl};
    s32 *fd = ssl_fds.lookup(&key);
    ev->fd = fd ? *fd : -1;
    ev->version = 0;
#if SSL_VERSION_OFFSET >= 0
    bpf_probe_read_user(&ev->version, sizeof(ev->version),
                        (void *)(call.ssl + SSL_VERSION_OFFSET));
#endif

    for (u32 i = 0; i < MAX_CHUNKS; i++) {
        u64 off = (u64)i * SSL_CHUNK_SIZE;
        if (off >= total)
            break;
        u32 n = SSL_CHUNK_SIZE;
        if (total - off < SSL_CHUNK_SIZE)
            n = (u32)(total - off);
        /* Re-bound n where the verifier can see it: [1, SSL_CHUNK_SIZE]. */
        if (n == 0 || n > SSL_CHUNK_SIZE)
            break;
        ev->offset = (u32)off;
        ev->data_len = n;
        if (bpf_probe_read_user(ev->data, n, (void *)(call.buf + off)) != 0) {
            /* The kernel would not copy these bytes (seen on 7.x under load). Say so with
             * an empty chunk at this offset: user space then reports the rest of the call
             * as missing instead of the whole call vanishing without a trace. */
            ev->data_len = 0;
            emit(ctx, ev, offsetof(struct ssl_data_event_t, data));
            break;
        }
        emit(ctx, ev, offsetof(struct ssl_data_event_t, data) + n);
    }
    return 0;
}


int uprobe_SSL_read(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_READ); }
int uprobe_SSL_write(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_WRITE); }
int uprobe_SSL_read_ex(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_READ_EX); }
int uprobe_SSL_write_ex(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_WRITE_EX); }
int uretprobe_SSL_read(struct pt_regs *ctx) { return ssl_return(ctx, SSL_DIR_READ); }
int uretprobe_SSL_write(struct pt_regs *ctx) { return ssl_return(ctx, SSL_DIR_WRITE); }

/* The handshake also does socket I/O: note its fd so that the first SSL_read of a server
 * already knows it. Kept in its own map because SSL_write may run a handshake inside. */
int uprobe_SSL_do_handshake(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 tid = (u32)id;
    u64 ssl = PT_REGS_PARM1(ctx);
    handshakes.update(&tid, &ssl);
    return 0;
}

int uretprobe_SSL_do_handshake(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    handshakes.delete(&tid);
    return 0;
}

static __always_inline void note_fd(long fd) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct ssl_key_t key = {.pid = id >> 32, .pad = 0, .ssl = 0};
    struct ssl_call_t *call = ssl_calls.lookup(&tid);
    if (call) {
        key.ssl = call->ssl;
    } else {
        u64 *ssl = handshakes.lookup(&tid);
        if (!ssl)
            return;
        key.ssl = *ssl;
    }
    s32 v = (s32)fd;
    ssl_fds.update(&key, &v);
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { note_fd(args->fd); return 0; }

/* ---- connections ------------------------------------------------------------------ */

struct owner_t {
    u32 pid;
    u32 tid;
    u32 uid;
    s32 fd;
    char comm[ECAP_COMM_LEN];
};

struct peer_key_t {
    u16 family;
    u16 rport;
    u8 raddr[16];
};

struct established_t {
    u64 sock;
    u16 lport;
    u16 pad[3];
    u8 laddr[16];
};

BPF_HASH(connect_fds, u32, s32, 16384);                               /* tid -> fd in connect() */
BPF_TABLE("lru_hash", u64, struct owner_t, connecting, 16384);        /* sock -> who connects */
BPF_TABLE("lru_hash", u64, struct owner_t, tracked, 65536);           /* sock -> reported owner */
BPF_HASH(accept_addrs, u32, u64, 16384);                              /* tid -> user sockaddr* */
BPF_TABLE("lru_hash", struct peer_key_t, struct established_t, accepted, 16384);

static __always_inline void fill_owner(struct owner_t *o, u64 id, s32 fd) {
    o->pid = id >> 32;
    o->tid = (u32)id;
    o->uid = (u32)bpf_get_current_uid_gid();
    o->fd = fd;
    bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline void conn_from_owner(struct conn_event_t *ev, struct owner_t *o, u8 kind,
                                            u64 sock) {
    ev->kind = ECAP_EVENT_CONN;
    ev->pid = o->pid;
    ev->tid = o->tid;
    ev->uid = o->uid;
    ev->fd = o->fd;
    ev->conn = kind;
    ev->sock = sock;
    ev->timestamp_ns = bpf_ktime_get_ns();
    __builtin_memcpy(ev->comm, o->comm, sizeof(ev->comm));
}

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
        u32 tid = (u32)id;
        s32 *fd = connect_fds.lookup(&tid);
        if (!fd)
            return 0;
        struct owner_t o = {};
        fill_owner(&o, id, *fd);
        connecting.update(&sock, &o);
        return 0;
    }
    if (newstate == ECAP_TCP_ESTABLISHED && oldstate == ECAP_TCP_SYN_SENT) {
        /* Often softirq context: the current task is not the owner; use the saved one. */
        struct owner_t *o = connecting.lookup(&sock);
        if (!o)
            return 0;
        struct conn_event_t ev = {};
        conn_from_owner(&ev, o, CONN_CONNECT, sock);
        ev.family = args->family;
        ev.lport = args->sport;
        ev.rport = args->dport;
        if (args->family == AF_INET) {
            __builtin_memcpy(ev.laddr, args->saddr, 4);
            __builtin_memcpy(ev.raddr, args->daddr, 4);
        } else {
            __builtin_memcpy(ev.laddr, args->saddr_v6, 16);
            __builtin_memcpy(ev.raddr, args->daddr_v6, 16);
        }
        struct owner_t saved = *o;
        tracked.update(&sock, &saved);
        connecting.delete(&sock);
        emit(args, &ev, sizeof(ev));
        return 0;
    }
    if (newstate == ECAP_TCP_ESTABLISHED && oldstate == ECAP_TCP_SYN_RECV) {
        /* A passive open completes before accept() returns it; accept() learns the peer
         * address and finds the local side here. */
        struct peer_key_t key = {};
        struct established_t est = {};
        key.family = args->family;
        key.rport = args->dport;
        est.sock = sock;
        est.lport = args->sport;
        if (args->family == AF_INET) {
            __builtin_memcpy(key.raddr, args->daddr, 4);
            __builtin_memcpy(est.laddr, args->saddr, 4);
        } else {
            __builtin_memcpy(key.raddr, args->daddr_v6, 16);
            __builtin_memcpy(est.laddr, args->saddr_v6, 16);
        }
        accepted.update(&key, &est);
        return 0;
    }
    if (newstate == ECAP_TCP_CLOSE) {
        connecting.delete(&sock);
        struct owner_t *o = tracked.lookup(&sock);
        if (!o)
            return 0;
        struct conn_event_t ev = {};
        conn_from_owner(&ev, o, CONN_CLOSE, sock);
        ev.family = args->family;
        tracked.delete(&sock);
        emit(args, &ev, sizeof(ev));
    }
    return 0;
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
    struct conn_event_t ev = {};
    conn_from_owner(&ev, &o, CONN_ACCEPT, 0);
    if (addr != 0) {
        /* The kernel has just written the peer's address into the caller's buffer. */
        struct peer_key_t key = {};
        bpf_probe_read_user(&key.family, sizeof(key.family), (void *)addr);
        if (key.family == AF_INET) {
            struct sockaddr_in sin = {};
            bpf_probe_read_user(&sin, sizeof(sin), (void *)addr);
            key.rport = __builtin_bswap16(sin.sin_port);
            __builtin_memcpy(key.raddr, &sin.sin_addr, 4);
        } else if (key.family == AF_INET6) {
            struct sockaddr_in6 sin6 = {};
            bpf_probe_read_user(&sin6, sizeof(sin6), (void *)addr);
            key.rport = __builtin_bswap16(sin6.sin6_port);
            __builtin_memcpy(key.raddr, &sin6.sin6_addr, 16);
        } else {
            key.family = 0;
        }
        if (key.family != 0) {
            ev.family = key.family;
            ev.rport = key.rport;
            __builtin_memcpy(ev.raddr, key.raddr, 16);
            struct established_t *est = accepted.lookup(&key);
            if (est) {
                ev.sock = est->sock;
                ev.lport = est->lport;
                __builtin_memcpy(ev.laddr, est->laddr, 16);
                u64 sock = est->sock;
                tracked.update(&sock, &o);
                accepted.delete(&key);
            }
        }
    }
    emit(ctx, &ev, sizeof(ev));
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return accept_enter((u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return accept_enter((u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args, args->ret); }

/* ---- packets (pcap model) -------------------------------------------------------------
 * A TC classifier on clsact: it copies the packet out and always returns TC_ACT_OK, so it
 * never drops or alters traffic. Packets need the skb as the output context, which only
 * perf event arrays offer, so this map is a perf buffer on every kernel. */
#ifndef MAX_PACKET_SIZE
#define MAX_PACKET_SIZE 65535
#endif
BPF_PERF_OUTPUT(packets);

static __always_inline int tc_capture(struct __sk_buff *skb, u32 direction) {
    struct packet_event_t ev = {};
    ev.kind = ECAP_EVENT_PACKET;
    ev.ifindex = skb->ifindex;
    ev.timestamp_ns = bpf_ktime_get_ns();
    ev.len = skb->len;
    u32 caplen = skb->len;
    if (caplen > MAX_PACKET_SIZE)
        caplen = MAX_PACKET_SIZE;
    ev.caplen = caplen;
    ev.direction = direction;
    packets.perf_submit_skb(skb, caplen, &ev, sizeof(ev));
    return TC_ACT_OK;
}

int tc_ingress(struct __sk_buff *skb) { return tc_capture(skb, 0); }
int tc_egress(struct __sk_buff *skb) { return tc_capture(skb, 1); }

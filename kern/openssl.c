/* ecapture "tls" module: the OpenSSL library's part of the TLS family.
 *
 * Compiled after kern/prelude.c and kern/tls.c, as one text (see prelude.c). Uprobes on
 * entry and return of SSL_read, SSL_write, SSL_read_ex and SSL_write_ex hand each call to
 * the family (tls_call_enter/tls_call_take/tls_send_data); SSL_do_handshake marks the
 * handshake, whose socket I/O tells the connection's fd before its first read.
 *
 * The SSL BIO (BIO_f_ssl) reads and writes without those functions: its read and write
 * methods, static functions of libssl's ssl/bio_ssl.c, call the library's internal record
 * functions. They get uprobes of their own, at the addresses ecapture/modules/openssl.py
 * reads from the BIO's method table, so no other kind of BIO (files, memory, sockets) runs
 * anything here. Their calls are SSL_read_ex's and SSL_write_ex's, with the BIO first.
 *
 * Version-specific offsets (SSL_VERSION_OFFSET, OFF_* of the secrets, OFF_S3 for 1.1.1)
 * arrive as -D flags from ecapture/modules/openssl.py and openssl_offsets.py.
 */
#include "openssl.h"

#ifndef SSL_VERSION_OFFSET
#define SSL_VERSION_OFFSET -1
#endif

#if defined(CAPTURE_KEYS) && !defined(LIBRARY_EMIT_KEYS)
/* A library with OpenSSL's API but other structs (BoringSSL) compiles its own file before
 * this one, defines LIBRARY_EMIT_KEYS and its own emit_keys(ctx, ssl). */
/* Keys: once per connection, at its first successful read or write. An SSL* is reused
 * after SSL_free, so a connection is (pid, SSL*) plus its client random. */
BPF_TABLE("lru_hash", struct tls_conn_key_t, u64, keys_sent, 65536);
BPF_PERCPU_ARRAY(key_heap, struct master_secret_event_t, SCRATCH_SLOTS);

/* Where the connection's client random is. OpenSSL 1.1.1's ssl_st points at its
 * ssl3_state_st (OFF_S3 is that pointer's offset); 3.x embeds it. 0: not allocated. */
static __always_inline u64 client_random_at(u64 ssl) {
#ifdef OFF_S3
    u64 s3 = 0;
    read_user(&s3, sizeof(s3), ssl + OFF_S3);
    return s3 ? s3 + OFF_CLIENT_RANDOM : 0;
#else
    return ssl + OFF_CLIENT_RANDOM;
#endif
}

static __always_inline void emit_keys(void *ctx, u64 ssl) {
    u64 id = bpf_get_current_pid_tgid();
    struct tls_conn_key_t key = {.pid = id >> 32, .pad = 0, .conn = ssl};
    u64 random = client_random_at(ssl);
    if (!random)
        return;
    u64 random_head = 0;
    if (read_user(&random_head, sizeof(random_head), random) != 0)
        return;
    u64 *sent = keys_sent.lookup(&key);
    if (sent && *sent == random_head)
        return;
    u32 slot = scratch_slot();
    struct master_secret_event_t *ev = key_heap.lookup(&slot);
    if (!ev)
        return;
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->kind = OPENSSL_EVENT_MASTER_SECRET;
    ev->pid = id >> 32;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->ssl = ssl;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    /* A read the kernel refuses (a page unmapped for a moment: see read_user()) leaves the
     * connection unmarked, so that its next read or write tries again rather than sending
     * zeros for a secret once and never again. */
    long failed = read_user(&ev->version, sizeof(ev->version), ssl + SSL_VERSION_OFFSET);
    failed |= read_user(ev->client_random, sizeof(ev->client_random), random);
    u64 session = 0;
    failed |= read_user(&session, sizeof(session), ssl + OFF_SESSION);
    if (session) {
        failed |= read_user(ev->master_key, sizeof(ev->master_key),
                            session + OFF_SESSION_MASTER_KEY);
        u64 cipher = 0;
        failed |= read_user(&cipher, sizeof(cipher), session + OFF_SESSION_CIPHER);
        if (cipher)
            failed |= read_user(&ev->cipher_id, sizeof(ev->cipher_id), cipher + OFF_CIPHER_ID);
    }
    failed |= read_user(ev->handshake_secret, 64, ssl + OFF_HANDSHAKE_SECRET);
    failed |= read_user(ev->handshake_traffic_hash, 64, ssl + OFF_HANDSHAKE_TRAFFIC_HASH);
    failed |= read_user(ev->client_app_traffic_secret, 64, ssl + OFF_CLIENT_APP_TRAFFIC_SECRET);
    failed |= read_user(ev->server_app_traffic_secret, 64, ssl + OFF_SERVER_APP_TRAFFIC_SECRET);
    failed |= read_user(ev->exporter_master_secret, 64, ssl + OFF_EXPORTER_MASTER_SECRET);
    if (failed)
        return;
    keys_sent.update(&key, &random_head);
    emit(ctx, ev, sizeof(*ev));
}
#endif

static __always_inline int ssl_enter(struct pt_regs *ctx, u32 func) {
    u64 len_ptr = 0;
    if (func == SSL_FUNC_READ_EX || func == SSL_FUNC_WRITE_EX)
        len_ptr = PT_REGS_PARM4(ctx); /* size_t *readbytes / *written */
    tls_call_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), len_ptr, func);
    return 0;
}

static __always_inline int ssl_return(struct pt_regs *ctx, u8 direction) {
    struct tls_call_t call;
    if (!tls_call_take(&call))
        return 0;
    u64 total = 0;
    if (call.func >= SSL_FUNC_READ_EX) {
        /* int SSL_read_ex(SSL *, void *, size_t, size_t *readbytes): 1 on success; the SSL
         * BIO's methods return the count the same way */
        if ((int)PT_REGS_RC(ctx) <= 0 || call.len_ptr == 0)
            return 0;
        read_user(&total, sizeof(total), call.len_ptr);
    } else {
        int ret = (int)PT_REGS_RC(ctx);
        if (ret <= 0)
            return 0;
        total = (u64)ret;
    }
    if (total == 0)
        return 0;
#ifdef CAPTURE_KEYS
    emit_keys(ctx, call.conn);
#endif
    s32 version = 0;
#if SSL_VERSION_OFFSET >= 0
    read_user(&version, sizeof(version), call.conn + SSL_VERSION_OFFSET);
    version &= 0xffff; /* BoringSSL keeps a u16 there, with another field beside it */
#endif
    tls_send_data(ctx, &call, direction, total, version);
    return 0;
}

int uprobe_SSL_read(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_READ); }
int uprobe_SSL_write(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_WRITE); }
int uprobe_SSL_read_ex(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_READ_EX); }
int uprobe_SSL_write_ex(struct pt_regs *ctx) { return ssl_enter(ctx, SSL_FUNC_WRITE_EX); }
int uretprobe_SSL_read(struct pt_regs *ctx) { return ssl_return(ctx, TLS_DIR_READ); }
int uretprobe_SSL_write(struct pt_regs *ctx) { return ssl_return(ctx, TLS_DIR_WRITE); }

#ifdef BIO_DATA_OFFSET
/* The SSL BIO's read or write method: int (BIO *, char *buf, size_t, size_t *done). The
 * connection is the BIO's SSL*, as SSL_read would have it (its fd, its keys): the first
 * member of the BIO's private data (BIO_SSL), which struct bio_st keeps at
 * BIO_DATA_OFFSET (the member BIO_get_data() returns, read from its code). */
static __always_inline int ssl_bio_enter(struct pt_regs *ctx, u32 func) {
    u64 data = 0, ssl = 0;
    read_user(&data, sizeof(data), PT_REGS_PARM1(ctx) + BIO_DATA_OFFSET);
    if (data == 0 || read_user(&ssl, sizeof(ssl), data) != 0 || ssl == 0)
        return 0;
    u64 done = PT_REGS_PARM4(ctx);
    if (done == 0)
        return 0;
    tls_call_enter(ssl, PT_REGS_PARM2(ctx), done, func);
    return 0;
}

int uprobe_ssl_bio_read(struct pt_regs *ctx) { return ssl_bio_enter(ctx, SSL_FUNC_BIO_READ); }
int uprobe_ssl_bio_write(struct pt_regs *ctx) { return ssl_bio_enter(ctx, SSL_FUNC_BIO_WRITE); }
#endif

/* The handshake also does socket I/O: note its fd so that the first SSL_read of a server
 * already knows it. Kept apart from calls because SSL_write may run a handshake inside. */
int uprobe_SSL_do_handshake(struct pt_regs *ctx) {
    tls_handshake_enter(PT_REGS_PARM1(ctx));
    return 0;
}

int uretprobe_SSL_do_handshake(struct pt_regs *ctx) {
    tls_handshake_exit();
    return 0;
}

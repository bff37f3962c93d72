/* ecapture "boringssl" module: what BoringSSL needs beyond OpenSSL's probes.
 *
 * Compiled after kern/prelude.c and kern/tls.c and BEFORE kern/openssl.c, as one text (see
 * prelude.c). BoringSSL's API is OpenSSL's, so kern/openssl.c's probes capture the
 * plaintext unchanged; only the secrets differ, and this file sends them
 * (boringssl_secret_event_t), in place of OpenSSL's key reader (LIBRARY_EMIT_KEYS).
 *
 * Why not read the secrets at the first SSL_read/SSL_write, as for OpenSSL: BoringSSL
 * frees its handshake state (s3->hs, which holds the TLS 1.3 handshake traffic secrets) in
 * SSL_do_handshake itself, before returning 1. So TLS 1.3 secrets are taken when BoringSSL
 * derives them: at the return of its HKDF-Expand-Label step (HKDF_expand in libcrypto, or
 * CRYPTO_tls13_hkdf_expand_label in later releases), called from inside an SSL call or
 * handshake of the thread; the label tells which secret it is and the output length is
 * the secret's real length. The TLS 1.2 master secret lives on in the session: it is read
 * at the connection's first successful read or write (emit_keys(), called by openssl.c).
 *
 * Struct offsets (BSSL_*) differ per BoringSSL release and arrive as -D flags from
 * ecapture/modules/boringssl_offsets.py.
 */
#define LIBRARY_EMIT_KEYS 1
#include "boringssl.h"

#ifdef CAPTURE_KEYS

#ifndef BSSL_SSL_VERSION
#define BSSL_SSL_VERSION -1 /* ssl_st.version (uint16_t); -1: the release has none */
#endif
#ifndef BSSL_S3_VERSION
#define BSSL_S3_VERSION -1 /* SSL3_STATE.version, where ssl_st has none (Android 16) */
#endif
#ifndef BSSL_SESSION_SECRET_LENGTH
#define BSSL_SESSION_SECRET_LENGTH -1 /* -1: no length field, the secret has 48 bytes */
#endif

#define BSSL_TLS1_3 0x0304
/* ARM's top-byte-ignore lets Android tag heap pointers: strip the tag before reading. */
#define BSSL_UNTAG(p) ((p) & 0x00FFFFFFFFFFFFFFULL)

BPF_PERCPU_ARRAY(bssl_heap, struct boringssl_secret_event_t, SCRATCH_SLOTS);
/* (pid, SSL*) -> first 8 bytes of the client random whose master secret was sent: an SSL*
 * is reused after SSL_free, a client random never. */
BPF_TABLE("lru_hash", struct tls_conn_key_t, u64, bssl_master_sent, 65536);

/* An HKDF-Expand-Label call in progress that derives a secret we want. */
struct bssl_expand_t {
    u64 ssl;
    u64 out;
    u64 out_len;
    u32 label;
    u32 pad;
};
BPF_HASH(bssl_expands, u32, struct bssl_expand_t, 16384); /* tid -> call */

static __always_inline u64 bssl_ptr(u64 addr) {
    u64 p = 0;
    if (read_user(&p, sizeof(p), addr) != 0)
        return 0;
    return BSSL_UNTAG(p);
}

static __always_inline u16 bssl_version(u64 ssl, u64 s3) {
    u16 version = 0;
#if BSSL_SSL_VERSION >= 0
    read_user(&version, sizeof(version), ssl + BSSL_SSL_VERSION);
#elif BSSL_S3_VERSION >= 0
    read_user(&version, sizeof(version), s3 + BSSL_S3_VERSION);
#endif
    return version;
}

/* The per-CPU event, its header and client random filled in. */
static __always_inline struct boringssl_secret_event_t *bssl_event(u64 ssl, u64 s3, u16 version,
                                                                   u8 label) {
    u32 slot = scratch_slot();
    struct boringssl_secret_event_t *ev = bssl_heap.lookup(&slot);
    if (!ev)
        return 0;
    __builtin_memset(ev, 0, sizeof(*ev));
    u64 id = bpf_get_current_pid_tgid();
    ev->kind = BORINGSSL_EVENT_SECRET;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->ssl = ssl;
    ev->version = version;
    ev->label = label;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    read_user(ev->client_random, sizeof(ev->client_random), s3 + BSSL_S3_CLIENT_RANDOM);
    return ev;
}

/* TLS <= 1.2: the master secret, from the session the handshake established. Called by
 * openssl.c at every successful read or write; sends once per connection. */
static __always_inline void emit_keys(void *ctx, u64 ssl) {
    ssl = BSSL_UNTAG(ssl);
    u64 s3 = bssl_ptr(ssl + BSSL_SSL_S3);
    if (!s3)
        return;
    u16 version = bssl_version(ssl, s3);
    if (version < 0x0300 || version >= BSSL_TLS1_3)
        return; /* TLS 1.3 secrets come from the key schedule (below); 0: unknown */
    u64 id = bpf_get_current_pid_tgid();
    struct tls_conn_key_t key = {.pid = id >> 32, .pad = 0, .conn = ssl};
    u64 random_head = 0;
    read_user(&random_head, sizeof(random_head), s3 + BSSL_S3_CLIENT_RANDOM);
    u64 *sent = bssl_master_sent.lookup(&key);
    if (sent && *sent == random_head)
        return;
    u64 session = bssl_ptr(s3 + BSSL_S3_ESTABLISHED_SESSION);
    if (!session)
        session = bssl_ptr(ssl + BSSL_SSL_SESSION);
    if (!session)
        return;
    u8 len = BSSL_SECRET_MAX;
#if BSSL_SESSION_SECRET_LENGTH >= 0
    /* An int in some releases, a uint8_t in others: its low byte is the length (<= 48). */
    read_user(&len, sizeof(len), session + BSSL_SESSION_SECRET_LENGTH);
#endif
    if (len == 0 || len > BSSL_SECRET_MAX)
        return;
    struct boringssl_secret_event_t *ev = bssl_event(ssl, s3, version, BSSL_LABEL_CLIENT_RANDOM);
    if (!ev)
        return;
    ev->secret_len = len;
    if (read_user(ev->secret, BSSL_SECRET_MAX, session + BSSL_SESSION_SECRET) != 0)
        return;
    bssl_master_sent.update(&key, &random_head);
    emit(ctx, ev, sizeof(*ev));
}

/* ---- TLS 1.3: the key schedule ---------------------------------------------------- */

static __always_inline int bssl_match(const u8 *label, const char *lit, u32 n) {
#pragma unroll
    for (u32 i = 0; i < n; i++)
        if (label[i] != (u8)lit[i])
            return 0;
    return 1;
}
#define BSSL_MATCH(label, lit) bssl_match(label, lit, sizeof(lit) - 1)

/* enum boringssl_secret_label of an RFC 8446 label (without "tls13 "), -1 for the labels
 * of keys, IVs, finished keys and the intermediate secrets. */
static __always_inline int bssl_label(const u8 *l, u32 n) {
    if (n == 12 && BSSL_MATCH(l + 4, " traffic")) {
        if (BSSL_MATCH(l, "c hs"))
            return BSSL_LABEL_CLIENT_HS;
        if (BSSL_MATCH(l, "s hs"))
            return BSSL_LABEL_SERVER_HS;
        if (BSSL_MATCH(l, "c ap"))
            return BSSL_LABEL_CLIENT_AP;
        if (BSSL_MATCH(l, "s ap"))
            return BSSL_LABEL_SERVER_AP;
        return -1;
    }
    if (n == 11 && BSSL_MATCH(l, "c e traffic"))
        return BSSL_LABEL_CLIENT_EARLY;
    if (n == 10 && BSSL_MATCH(l, "exp master"))
        return BSSL_LABEL_EXPORTER;
    return -1;
}

static __always_inline int bssl_expand_enter(u64 out, u64 out_len, const u8 *label, u32 n) {
    int which = bssl_label(label, n);
    if (which < 0)
        return 0;
    /* Only derivations inside an SSL call or handshake of a traced process: that thread's
     * connection is the SSL* the family noted at the call's entry. */
    struct tls_conn_key_t key = {};
    if (!tls_in_call(&key))
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct bssl_expand_t call = {};
    call.ssl = BSSL_UNTAG(key.conn);
    call.out = out;
    call.out_len = out_len;
    call.label = (u32)which;
    bssl_expands.update(&tid, &call);
    return 0;
}

/* int HKDF_expand(uint8_t *out, size_t out_len, const EVP_MD *, const uint8_t *prk,
 *                 size_t prk_len, const uint8_t *info, size_t info_len)
 * info is RFC 8446's HkdfLabel: uint16 length, then <"tls13 " + label> and <context>, each
 * behind a one-byte length. */
int uprobe_bssl_HKDF_expand(struct pt_regs *ctx) {
    u8 info[24] = {};
    if (read_user(info, sizeof(info), PT_REGS_PARM6(ctx)) != 0)
        return 0;
    u32 n = info[2];
    if (n < 6 + 10 || n > 6 + 12 || !BSSL_MATCH(info + 3, "tls13 "))
        return 0;
    return bssl_expand_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), info + 9, n - 6);
}

/* int CRYPTO_tls13_hkdf_expand_label(uint8_t *out, size_t out_len, const EVP_MD *,
 *     const uint8_t *secret, size_t secret_len, const uint8_t *label, size_t label_len,
 *     const uint8_t *hash, size_t hash_len): the label without "tls13 "; its length is the
 * seventh argument, on the stack on x86-64 and in x6 on arm64. */
int uprobe_bssl_tls13_expand_label(struct pt_regs *ctx) {
    u64 n = 0;
#if defined(__TARGET_ARCH_arm64)
    n = ctx->regs[6];
#else
    read_user(&n, sizeof(n), PT_REGS_SP(ctx) + 8);
#endif
    if (n < 10 || n > 12)
        return 0;
    u8 label[12] = {};
    if (read_user(label, sizeof(label), PT_REGS_PARM6(ctx)) != 0)
        return 0;
    return bssl_expand_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), label, (u32)n);
}

/* Both return 1 on success, with the secret in out. When the second calls the first, the
 * inner call's entry replaced the outer's and its return sends: one event per secret. */
int uretprobe_bssl_expand(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct bssl_expand_t *found = bssl_expands.lookup(&tid);
    if (!found)
        return 0;
    struct bssl_expand_t call = *found;
    bssl_expands.delete(&tid);
    if ((int)PT_REGS_RC(ctx) != 1 || call.out_len == 0 || call.out_len > BSSL_SECRET_MAX)
        return 0;
    u64 s3 = bssl_ptr(call.ssl + BSSL_SSL_S3);
    if (!s3)
        return 0;
    struct boringssl_secret_event_t *ev = bssl_event(call.ssl, s3, BSSL_TLS1_3, (u8)call.label);
    if (!ev)
        return 0;
    ev->secret_len = (u8)call.out_len;
    /* A constant size for the verifier (out is a 48-byte array of the handshake state, or
     * a stack buffer): secret_len says how many bytes are the secret. */
    if (read_user(ev->secret, BSSL_SECRET_MAX, call.out) != 0)
        return 0;
    emit(ctx, ev, sizeof(*ev));
    return 0;
}

#endif /* CAPTURE_KEYS */

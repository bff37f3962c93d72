/* ecapture "gnutls" module: the GnuTLS library's part of the TLS family.
 *
 * Compiled after kern/prelude.c and kern/tls.c, as one text (see prelude.c). Uprobes on
 * entry and return of gnutls_record_send/recv and their variants hand each call to the
 * family (tls_call_enter/tls_call_take/tls_send_data); gnutls_handshake marks the
 * handshake, whose socket I/O tells the session's fd before its first record call, and
 * its successful return is when the session's secrets are read.
 *
 * One application call, one event: gnutls_record_send tail-jumps into gnutls_record_send2
 * (3.6.3+), so the inner entry finds the outer call of the same thread, session and buffer
 * in progress and leaves it alone; both return probes fire at the one return, the first
 * takes the call, the second finds none. gnutls_record_recv and gnutls_record_recv_seq
 * share an internal function and never enter one another; nor do the 0-RTT calls.
 *
 * Version-specific offsets (GNUTLS_OFF_*) arrive as -D flags from
 * ecapture/modules/gnutls.py and gnutls_offsets.py; without them (a version whose layout
 * is unknown) only plaintext is captured, with version 0.
 */
#include "gnutls.h"

/* gnutls_protocol_t, the library's own numbering of versions. */
#define GNUTLS_SSL3 1
#define GNUTLS_TLS1_0 2
#define GNUTLS_TLS1_1 3
#define GNUTLS_TLS1_2 4
#define GNUTLS_TLS1_3 5
#define GNUTLS_DTLS1_0 201
#define GNUTLS_DTLS1_2 202

#ifdef CAPTURE_KEYS
/* The negotiated version as on the wire: session->security_parameters.pversion->id. */
static __always_inline s32 gnutls_wire_version(u64 session) {
    u64 pversion = 0;
    s32 id = 0;
    read_user(&pversion, sizeof(pversion), session + GNUTLS_OFF_PVERSION);
    if (pversion == 0)
        return 0;
    read_user(&id, sizeof(id), pversion + GNUTLS_OFF_VERSION_ID);
    switch (id) {
    case GNUTLS_SSL3: return 0x0300;
    case GNUTLS_TLS1_0: return 0x0301;
    case GNUTLS_TLS1_1: return 0x0302;
    case GNUTLS_TLS1_2: return 0x0303;
    case GNUTLS_TLS1_3: return 0x0304;
    case GNUTLS_DTLS1_0: return 0xfeff;
    case GNUTLS_DTLS1_2: return 0xfefd;
    }
    return 0;
}

/* (pid, session) -> the first 8 bytes of the client random whose secrets were sent: once
 * per handshake, and a session object freed and reused gets a new random. */
BPF_TABLE("lru_hash", struct tls_conn_key_t, u64, gnutls_keys_sent, 65536);
BPF_PERCPU_ARRAY(gnutls_key_heap, struct gnutls_secrets_event_t, SCRATCH_SLOTS);

/* Send the session's secrets unless they were sent for this handshake already. 1 when they
 * have been (now or before): the handshake is complete and its version final. */
static __always_inline int gnutls_emit_keys(void *ctx, u64 session) {
    u64 id = bpf_get_current_pid_tgid();
    struct tls_conn_key_t key = {.pid = id >> 32, .pad = 0, .conn = session};
    u64 random_head = 0;
    if (read_user(&random_head, sizeof(random_head), session + GNUTLS_OFF_CLIENT_RANDOM) != 0
        || random_head == 0)
        return 0; /* no handshake yet */
    u64 *sent = gnutls_keys_sent.lookup(&key);
    if (sent && *sent == random_head)
        return 1;
    u32 slot = scratch_slot();
    struct gnutls_secrets_event_t *ev = gnutls_key_heap.lookup(&slot);
    if (!ev)
        return 0;
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->kind = GNUTLS_EVENT_SECRETS;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->session = session;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    u64 ptr = 0;
    read_user(&ptr, sizeof(ptr), session + GNUTLS_OFF_PVERSION);
    if (ptr)
        read_user(&ev->protocol, sizeof(ev->protocol), ptr + GNUTLS_OFF_VERSION_ID);
    if (ev->protocol == 0)
        return 0; /* no version negotiated yet: nothing worth sending, try again later */
    ptr = 0;
    read_user(&ptr, sizeof(ptr), session + GNUTLS_OFF_PRF);
    if (ptr)
        read_user(&ev->prf_mac, sizeof(ev->prf_mac), ptr + GNUTLS_OFF_MAC_ID);
    read_user(ev->client_random, sizeof(ev->client_random), session + GNUTLS_OFF_CLIENT_RANDOM);
    read_user(ev->master_secret, sizeof(ev->master_secret), session + GNUTLS_OFF_MASTER_SECRET);
    if (ev->protocol == GNUTLS_TLS1_3) {
        /* key.proto is a union: these hold TLS 1.3 secrets only in a TLS 1.3 session. */
        read_user(ev->client_early_traffic_secret, GNUTLS_MAX_HASH_SIZE,
                  session + GNUTLS_OFF_E_CKEY);
        read_user(ev->client_handshake_traffic_secret, GNUTLS_MAX_HASH_SIZE,
                  session + GNUTLS_OFF_HS_CKEY);
        read_user(ev->server_handshake_traffic_secret, GNUTLS_MAX_HASH_SIZE,
                  session + GNUTLS_OFF_HS_SKEY);
        read_user(ev->client_traffic_secret_0, GNUTLS_MAX_HASH_SIZE,
                  session + GNUTLS_OFF_AP_CKEY);
        read_user(ev->server_traffic_secret_0, GNUTLS_MAX_HASH_SIZE,
                  session + GNUTLS_OFF_AP_SKEY);
        read_user(ev->exporter_secret, GNUTLS_MAX_HASH_SIZE, session + GNUTLS_OFF_AP_EXPKEY);
    }
    /* Only complete secrets, and only those mark the handshake as sent: a client's 0-RTT
     * data is queued (a successful record call) when the new session already has its
     * client random but still a placeholder version and no secrets. */
    u64 head = 0;
    if (ev->protocol == GNUTLS_TLS1_3)
        __builtin_memcpy(&head, ev->client_traffic_secret_0, sizeof(head));
    else
        __builtin_memcpy(&head, ev->master_secret, sizeof(head));
    if (head == 0)
        return 0;
    gnutls_keys_sent.update(&key, &random_head);
    emit(ctx, ev, sizeof(*ev));
    return 1;
}
#endif

/* ---- record calls ------------------------------------------------------------------ */

static __always_inline int gnutls_enter(struct pt_regs *ctx, u32 func) {
    /* ssize_t gnutls_record_send(gnutls_session_t, const void *data, size_t size): every
     * hooked record function takes the session and the buffer first and returns the
     * plaintext length. */
    tls_call_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, func);
    return 0;
}

static __always_inline int gnutls_return(struct pt_regs *ctx, u8 direction) {
    struct tls_call_t call;
    if (!tls_call_take(&call))
        return 0;
    long ret = (long)PT_REGS_RC(ctx);
    if (ret <= 0)
        return 0; /* an error (GNUTLS_E_AGAIN, ...) or end of data: no plaintext */
    s32 version = 0;
#ifdef CAPTURE_KEYS
    /* Keys of a session whose handshake ran before the capture, or inside this call. Until
     * the handshake is done the version in the session is a placeholder, not the one the
     * data travels with (a client's 0-RTT data is queued before the handshake). */
    if (gnutls_emit_keys(ctx, call.conn))
        version = gnutls_wire_version(call.conn);
#endif
    tls_send_data(ctx, &call, direction, (u64)ret, version);
    return 0;
}

int uprobe_gnutls_record_recv(struct pt_regs *ctx) {
    return gnutls_enter(ctx, GNUTLS_FUNC_RECV);
}

int uprobe_gnutls_record_recv_seq(struct pt_regs *ctx) {
    return gnutls_enter(ctx, GNUTLS_FUNC_RECV_SEQ);
}

int uprobe_gnutls_record_send(struct pt_regs *ctx) {
    return gnutls_enter(ctx, GNUTLS_FUNC_SEND);
}

int uprobe_gnutls_record_send_range(struct pt_regs *ctx) {
    return gnutls_enter(ctx, GNUTLS_FUNC_SEND_RANGE);
}

/* 0-RTT data: the client's call queues it before the handshake sends it, the server's takes
 * what the handshake received. Neither enters another record function. */
int uprobe_gnutls_record_send_early_data(struct pt_regs *ctx) {
    return gnutls_enter(ctx, GNUTLS_FUNC_SEND_EARLY);
}

int uprobe_gnutls_record_recv_early_data(struct pt_regs *ctx) {
    return gnutls_enter(ctx, GNUTLS_FUNC_RECV_EARLY);
}

int uprobe_gnutls_record_send2(struct pt_regs *ctx) {
    /* Entered from gnutls_record_send with the same session and buffer: that call is the
     * application's, already noted. */
    if (tls_call_active(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), GNUTLS_FUNC_SEND))
        return 0;
    return gnutls_enter(ctx, GNUTLS_FUNC_SEND2);
}

int uretprobe_gnutls_record_recv(struct pt_regs *ctx) {
    return gnutls_return(ctx, TLS_DIR_READ);
}

int uretprobe_gnutls_record_send(struct pt_regs *ctx) {
    return gnutls_return(ctx, TLS_DIR_WRITE);
}

/* ---- handshake --------------------------------------------------------------------- */

/* The handshake's socket I/O tells the session's fd before its first record call (a
 * server's first read already knows it). Kept apart from record calls: a record call may
 * run a handshake step inside (a rehandshake, or an early-start server). */
BPF_HASH(gnutls_handshakes, u32, u64, 16384); /* tid -> session in gnutls_handshake */

int uprobe_gnutls_handshake(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id, (u32)bpf_get_current_uid_gid()))
        return 0;
    u64 session = PT_REGS_PARM1(ctx);
    u32 tid = (u32)id;
    gnutls_handshakes.update(&tid, &session);
    tls_handshake_enter(session);
    return 0;
}

int uretprobe_gnutls_handshake(struct pt_regs *ctx) {
    tls_handshake_exit();
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *found = gnutls_handshakes.lookup(&tid);
    if (!found)
        return 0;
    u64 session = *found;
    gnutls_handshakes.delete(&tid);
#ifdef CAPTURE_KEYS
    /* 0: the handshake is complete; a non-blocking one returns GNUTLS_E_AGAIN before. */
    if ((int)PT_REGS_RC(ctx) == 0)
        gnutls_emit_keys(ctx, session);
#endif
    return 0;
}

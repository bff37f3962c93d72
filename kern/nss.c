/* ecapture "nss" module: the NSS library's part of the TLS family.
 *
 * Compiled after kern/prelude.c and kern/tls.c, as one text (see prelude.c). A program
 * using NSS reads and writes TLS plaintext through NSPR's generic I/O calls on the socket
 * NSS's SSL_ImportFD() returned: PR_Read, PR_Write, PR_Recv, PR_Send and PR_Writev in
 * libnspr4. Uprobes on their entry and return hand each call to the family
 * (tls_call_enter/tls_call_take/tls_send_data); SSL_ForceHandshake in libssl3 marks an
 * explicit handshake, whose socket I/O tells the connection's fd early. The connection id
 * is the PRFileDesc* the program passed.
 *
 * Only NSPR's public, ABI-stable structs are read (prio.h), never NSS's own: no offsets
 * depend on the NSS version.
 */

/* prio.h: struct PRFileDesc starts with `const PRIOMethods *methods`, and struct
 * PRIOMethods with `PRDescType file_type` (an enum, 4 bytes). */
#define NSPR_DESC_LAYERED 4 /* PR_DESC_LAYERED */
#define NSPR_MSG_PEEK 0x2   /* PR_MSG_PEEK: PR_Recv leaves the data to be read again */
#define NSPR_MAX_IOVECTOR_SIZE 16 /* PR_MAX_IOVECTOR_SIZE: PR_Writev takes no more */

/* A PR_Writev segment larger than this much is sent up to it and the call ends there,
 * reported short: the segments' loops are nested, and the verifier walks every piece. */
#ifndef NSS_IOV_PIECES
#define NSS_IOV_PIECES 4
#endif

/* NSS's functions, as the ssl_data_event_t func field numbers them (FUNCS in
 * ecapture/modules/nss.py). */
enum nss_func {
    NSS_FUNC_PR_READ = 0,
    NSS_FUNC_PR_WRITE = 1,
    NSS_FUNC_PR_RECV = 2,
    NSS_FUNC_PR_SEND = 3,
    NSS_FUNC_PR_WRITEV = 4,
};

/* PRIOVec on LP64: {char *iov_base; int iov_len;}, padded to 16 bytes. */
struct nspr_iovec_t {
    u64 base;
    s32 len;
    s32 pad;
};

/* Whether fd is a layered NSPR descriptor, the kind SSL_ImportFD() returns.
 *
 * PR_Write and friends serve every NSPR descriptor: files, pipes, plain TCP and UDP
 * sockets too (tstclnt writes what it received to stdout with PR_Write). NSPR's own
 * descriptors carry PR_DESC_FILE, _SOCKET_TCP, _SOCKET_UDP or _PIPE in their methods
 * table; a layer pushed on top of one (PR_PushIOLayer, which SSL_ImportFD does with NSS's
 * SSL layer, whose methods start from PR_GetDefaultIOMethods()) carries PR_DESC_LAYERED.
 * So this keeps every SSL socket, also when the program pushed a layer of its own above
 * SSL (Firefox's PSM layer), and drops plain files, pipes and sockets, for two reads of
 * user memory. It would also keep a non-SSL layer a program pushed on a plain descriptor;
 * what such a layer carries is then shown as plaintext, which it is. NSS's SSL layer is
 * not recognisable more precisely: its identity is a number handed out at run time
 * (PR_GetUniqueIdentity("SSL")) and its methods table is a static of libssl3. */
static __always_inline int nspr_layered(u64 fd) {
    u64 methods = 0;
    if (read_user(&methods, sizeof(methods), fd) != 0 || methods == 0)
        return 0;
    s32 file_type = 0;
    if (read_user(&file_type, sizeof(file_type), methods) != 0)
        return 0;
    return file_type == NSPR_DESC_LAYERED;
}

static __always_inline int nspr_enter(struct pt_regs *ctx, u32 func) {
    u64 fd = PT_REGS_PARM1(ctx);
    if (!nspr_layered(fd))
        return 0;
    tls_call_enter(fd, PT_REGS_PARM2(ctx), 0, func);
    return 0;
}

static __always_inline int nspr_return(struct pt_regs *ctx, u8 direction) {
    struct tls_call_t call;
    if (!tls_call_take(&call))
        return 0;
    int ret = (int)PT_REGS_RC(ctx); /* PRInt32: bytes transferred, 0 at EOF, -1 on error */
    if (ret <= 0)
        return 0;
    /* NSS does not tell the TLS version without its own structs: 0, unknown. */
    tls_send_data(ctx, &call, direction, (u64)ret, 0);
    return 0;
}

int uprobe_PR_Read(struct pt_regs *ctx) { return nspr_enter(ctx, NSS_FUNC_PR_READ); }
int uprobe_PR_Write(struct pt_regs *ctx) { return nspr_enter(ctx, NSS_FUNC_PR_WRITE); }
int uprobe_PR_Send(struct pt_regs *ctx) { return nspr_enter(ctx, NSS_FUNC_PR_SEND); }
int uretprobe_PR_Read(struct pt_regs *ctx) { return nspr_return(ctx, TLS_DIR_READ); }
int uretprobe_PR_Write(struct pt_regs *ctx) { return nspr_return(ctx, TLS_DIR_WRITE); }

/* PRInt32 PR_Recv(PRFileDesc *fd, void *buf, PRInt32 amount, PRIntn flags, timeout) */
int uprobe_PR_Recv(struct pt_regs *ctx) {
    if (PT_REGS_PARM4(ctx) & NSPR_MSG_PEEK)
        return 0; /* the same bytes come again from the read that consumes them */
    return nspr_enter(ctx, NSS_FUNC_PR_RECV);
}

/* ---- PR_Writev ------------------------------------------------------------------- */

/* PRInt32 PR_Writev(PRFileDesc *fd, const PRIOVec *iov, PRInt32 iov_size, timeout): the
 * call's plaintext is its segments in order, as many bytes of them as it returned (a
 * blocking call writes all). It is sent as one call whose chunks follow the segments:
 * user space joins them by offset, as for any call. The header is the family's
 * (tls_data_event), the chunks too (tls_send_chunk); only the walk over segments is ours. */
BPF_PERCPU_ARRAY(nss_iov_done, u64, SCRATCH_SLOTS);

static __always_inline void nss_send_iov(void *ctx, struct tls_call_t *call, u64 total) {
    struct ssl_data_event_t *ev = tls_data_event(call, TLS_DIR_WRITE, total, 0);
    if (!ev)
        return;
    u32 slot = scratch_slot();

    /* Bytes of the call sent so far, the next chunk's offset: kept in map memory, which
     * the verifier does not follow, so that every path through a segment reaches the
     * next one in the same state and is walked once, not once per way the last ended. */
    u64 *done = nss_iov_done.lookup(&slot);
    if (!done)
        return;
    *done = 0;
    for (u32 i = 0; i < NSPR_MAX_IOVECTOR_SIZE; i++) {
        u64 base = *done;
        if (base >= total)
            break;
        struct nspr_iovec_t seg = {};
        if (read_user(&seg, sizeof(seg), call->buf + (u64)i * sizeof(seg)) != 0)
            break;
        if (seg.len <= 0)
            continue;
        u64 n = (u64)seg.len;
        if (n > total - base)
            n = total - base;
        int whole = n <= (u64)NSS_IOV_PIECES * TLS_CHUNK_SIZE;
        if (!whole)
            n = (u64)NSS_IOV_PIECES * TLS_CHUNK_SIZE;
        /* tls_send_chunk reads at buf + off and labels the chunk off: this segment's
         * bytes, at the call's offset. */
        u64 buf = seg.base - base;
        int sent = 1;
#define NSS_SEND_CHUNK(off, len) (sent = tls_send_chunk(ctx, ev, buf, base + (off), len))
        ECAP_FOR_PIECES(n, TLS_CHUNK_SIZE, NSS_IOV_PIECES, NSS_SEND_CHUNK)
#undef NSS_SEND_CHUNK
        if (!whole || !sent)
            break; /* the rest of the call shows as missing */
        *done = base + n;
    }
}

int uprobe_PR_Writev(struct pt_regs *ctx) { return nspr_enter(ctx, NSS_FUNC_PR_WRITEV); }

int uretprobe_PR_Writev(struct pt_regs *ctx) {
    struct tls_call_t call;
    if (!tls_call_take(&call))
        return 0;
    int ret = (int)PT_REGS_RC(ctx);
    if (ret <= 0)
        return 0;
    nss_send_iov(ctx, &call, (u64)ret);
    return 0;
}

/* ---- handshake ------------------------------------------------------------------- */

/* SECStatus SSL_ForceHandshake(PRFileDesc *fd), in libssl3: a handshake done before the
 * first read or write does socket I/O outside any data call. Most programs leave the
 * handshake to their first PR_Read/PR_Write, whose own socket I/O tells the fd. */
int uprobe_SSL_ForceHandshake(struct pt_regs *ctx) {
    tls_handshake_enter(PT_REGS_PARM1(ctx));
    return 0;
}

int uretprobe_SSL_ForceHandshake(struct pt_regs *ctx) {
    tls_handshake_exit();
    return 0;
}

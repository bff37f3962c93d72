/* ecapture "postgres" module: the statements a PostgreSQL backend runs, from both protocols.
 *
 * Only exported functions (a stripped server has no others):
 *   - a uretprobe on pq_getbyte(): its result is the type of the protocol message the backend
 *     just started to read ('Q' simple query, 'P' parse, 'B' bind, 'E' execute, ...);
 *   - a uprobe on pg_parse_query(const char *): the SQL text of a Query or Parse message,
 *     labelled with that type; a second parse within one message is nested (the body of a
 *     SQL function being inlined or run), not something the client sent;
 *   - a uprobe on PortalRun(Portal, long, bool isTopLevel, ...): a top-level run whose
 *     portal->sourceText is not the pointer the backend parsed last is an Execute of the
 *     extended protocol (its text is the cached plan's copy); a simple query's statements
 *     run on the very text pg_parse_query() got, which the parse event already carried;
 *   - a uprobe on pq_endmessage(StringInfo): an ErrorResponse ('E') on its way to the client
 *     is sent (its first PG_ERROR_MAX bytes), so that a statement's failure shows (an ERROR
 *     longjmps: no uretprobe of the functions that failed would fire).
 *
 * Knobs (-D flags): PG_SOURCE_TEXT_OFF, the offset of PortalData.sourceText in this server
 * (read by user space from the server's own PortalDefineQuery()); PG_PID, a process whose
 * children are captured too (a postmaster's backends), with KOFF_TASK_REAL_PARENT and
 * KOFF_TASK_TGID from the kernel's BTF; TARGET_UID from the prelude.
 */
#include "postgres.h"

#ifndef PG_SOURCE_TEXT_OFF
#error "PG_SOURCE_TEXT_OFF: the offset of PortalData.sourceText, from user space"
#endif
#ifndef PG_PID
#define PG_PID 0 /* every process */
#endif
#if PG_PID && !(defined(KOFF_TASK_REAL_PARENT) && defined(KOFF_TASK_TGID))
#error "PG_PID needs KOFF_TASK_REAL_PARENT and KOFF_TASK_TGID from the kernel's BTF"
#endif
/* Kernel memory: bpf_probe_read_kernel() arrived with the user variant, in Linux 5.5. */
#if HAVE_PROBE_READ_USER
#define pg_read_kernel bpf_probe_read_kernel
#else
#define pg_read_kernel bpf_probe_read
#endif

/* StringInfoData {char *data; int len; int maxlen; int cursor;}, unchanged since
 * PostgreSQL 7; pq_beginmessage() keeps the message type in 'cursor' until
 * pq_endmessage() sends it (src/backend/libpq/pqformat.c). */
#define PG_STRINGINFO_DATA_OFF 0
#define PG_STRINGINFO_LEN_OFF 8
#define PG_STRINGINFO_CURSOR_OFF 16

/* PortalData's first two members, unchanged since PostgreSQL 8. */
#define PG_PORTAL_NAME_OFF 0
#define PG_PORTAL_PREPSTMTNAME_OFF 8

/* What a backend is doing, by tgid: the message it handles and the text it parsed last. */
struct pg_backend_t {
    u64 parsed_text; /* the text of the last message's own (not nested) parse; 0 before */
    u8 msg_type;     /* the last message type pq_getbyte() returned; 0 unknown */
    u8 parsed;       /* pg_parse_query() already ran for this message */
};
/* LRU: backends exit without telling us; the oldest entries make room. */
BPF_TABLE("lru_hash", u32, struct pg_backend_t, backends, 16384);

/* Events are larger than the 512-byte BPF stack: build them in per-CPU slots. */
BPF_PERCPU_ARRAY(parse_scratch, struct pg_parse_event_t, SCRATCH_SLOTS);
BPF_PERCPU_ARRAY(execute_scratch, struct pg_execute_event_t, SCRATCH_SLOTS);
BPF_PERCPU_ARRAY(error_scratch, struct pg_error_event_t, SCRATCH_SLOTS);

/* --pid: that process, and the processes it forked (a postmaster's backends). */
static __always_inline int pg_traced(u64 pid_tgid, u32 uid) {
    if (TARGET_UID != 0xffffffff && uid != TARGET_UID)
        return 0;
#if PG_PID
    if ((u32)(pid_tgid >> 32) == PG_PID)
        return 1;
    /* The parent's tgid, at the offsets the running kernel's BTF gave: the kernel headers
     * bcc compiles against may be another kernel's. */
    u64 task = bpf_get_current_task(), parent = 0;
    u32 ppid = 0;
    pg_read_kernel(&parent, sizeof(parent), (void *)(task + KOFF_TASK_REAL_PARENT));
    pg_read_kernel(&ppid, sizeof(ppid), (void *)(parent + KOFF_TASK_TGID));
    return ppid == PG_PID;
#else
    return 1;
#endif
}

/* Copy a NUL-terminated text of up to PG_TEXT_MAX - 1 bytes; its length without the NUL,
 * or -1. *truncated says whether the text went on beyond what was copied. */
static __always_inline long read_text(u8 *dst, u64 src, u8 *truncated) {
    long n = bpf_probe_read_user_str(dst, PG_TEXT_MAX, (const void *)src);
    if (n <= 0)
        return -1;
    u32 len = (u32)n - 1; /* without the NUL */
    char next = 0;
    if (len == PG_TEXT_MAX - 1)
        read_user(&next, 1, src + len);
    *truncated = next != 0;
    return len;
}

/* The result of pq_getbyte() is the next message's type byte (or EOF, -1). */
int pg_getbyte_return(struct pt_regs *ctx) {
    int c = (int)PT_REGS_RC(ctx);
    if (c < 0)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!pg_traced(pid_tgid, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 pid = pid_tgid >> 32;
    struct pg_backend_t fresh = {};
    struct pg_backend_t *b = backends.lookup_or_try_init(&pid, &fresh);
    if (!b)
        return 0;
    b->msg_type = (u8)c;
    b->parsed = 0;
    return 0;
}

int pg_parse_query_entry(struct pt_regs *ctx) {
    u64 text = PT_REGS_PARM1(ctx);
    if (!text)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!pg_traced(pid_tgid, uid))
        return 0;
    u32 pid = pid_tgid >> 32;
    struct pg_backend_t fresh = {};
    struct pg_backend_t *b = backends.lookup_or_try_init(&pid, &fresh);
    u8 msg_type = 0, nested = 0;
    if (b) {
        msg_type = b->msg_type;
        nested = b->parsed;
        b->parsed = 1;
        if (!nested)
            b->parsed_text = text; /* the statements of a simple query will run on it */
    }
    u32 slot = scratch_slot();
    struct pg_parse_event_t *ev = parse_scratch.lookup(&slot);
    if (!ev)
        return 0;
    long len = read_text(ev->text, text, &ev->truncated);
    if (len < 0 || len > PG_TEXT_MAX - 1) /* the bound again, for the verifier */
        return 0;
    ev->kind = PG_EVENT_PARSE;
    ev->pid = pid;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->uid = uid;
    ev->text_len = len;
    ev->msg_type = msg_type;
    ev->nested = nested;
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    emit(ctx, ev, __builtin_offsetof(struct pg_parse_event_t, text) + (u32)len);
    return 0;
}

int pg_portal_run_entry(struct pt_regs *ctx) {
    u64 portal = PT_REGS_PARM1(ctx);
    /* isTopLevel: false for a portal run inside another (EXECUTE of a prepared statement
     * from SQL, functions): the client did not send those. */
    if (!portal || !(u8)PT_REGS_PARM3(ctx))
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!pg_traced(pid_tgid, uid))
        return 0;
    u32 pid = pid_tgid >> 32;
    u64 source = 0;
    read_user(&source, sizeof(source), portal + PG_SOURCE_TEXT_OFF);
    if (!source)
        return 0;
    u8 msg_type = 0;
    struct pg_backend_t *b = backends.lookup(&pid);
    if (b) {
        if (b->parsed_text == source)
            return 0; /* a statement of the simple query parsed last: already sent */
        msg_type = b->msg_type;
    }
    u32 slot = scratch_slot();
    struct pg_execute_event_t *ev = execute_scratch.lookup(&slot);
    if (!ev)
        return 0;
    long len = read_text(ev->text, source, &ev->truncated);
    if (len < 0 || len > PG_TEXT_MAX - 1)
        return 0;
    u64 name = 0, stmt = 0;
    read_user(&name, sizeof(name), portal + PG_PORTAL_NAME_OFF);
    read_user(&stmt, sizeof(stmt), portal + PG_PORTAL_PREPSTMTNAME_OFF);
    ev->portal[0] = 0;
    ev->statement[0] = 0;
    if (name)
        bpf_probe_read_user_str(ev->portal, sizeof(ev->portal), (const void *)name);
    if (stmt) /* NULL: the unnamed statement */
        bpf_probe_read_user_str(ev->statement, sizeof(ev->statement), (const void *)stmt);
    ev->kind = PG_EVENT_EXECUTE;
    ev->pid = pid;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->uid = uid;
    ev->text_len = len;
    ev->msg_type = msg_type;
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    emit(ctx, ev, __builtin_offsetof(struct pg_execute_event_t, text) + (u32)len);
    return 0;
}

/* Every message that pq_beginmessage() began ends here; only an ErrorResponse is sent on
 * (rows and row descriptions go through the _reuse variants and never come here). */
int pg_endmessage_entry(struct pt_regs *ctx) {
    u64 buf = PT_REGS_PARM1(ctx);
    int type = 0;
    if (!buf || read_user(&type, sizeof(type), buf + PG_STRINGINFO_CURSOR_OFF) != 0 ||
        type != 'E')
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!pg_traced(pid_tgid, uid))
        return 0;
    u64 data = 0;
    int len = 0;
    read_user(&data, sizeof(data), buf + PG_STRINGINFO_DATA_OFF);
    read_user(&len, sizeof(len), buf + PG_STRINGINFO_LEN_OFF);
    if (!data || len <= 0)
        return 0;
    u32 slot = scratch_slot();
    struct pg_error_event_t *ev = error_scratch.lookup(&slot);
    if (!ev)
        return 0;
    u32 n = (u32)len;
    ev->truncated = n > PG_ERROR_MAX;
    if (n > PG_ERROR_MAX)
        n = PG_ERROR_MAX;
    ECAP_OPAQUE(n);
    if (n > PG_ERROR_MAX || n == 0) /* the bound again, on the register used below */
        return 0;
    if (bpf_probe_read_user(ev->body, n, (const void *)data) != 0)
        return 0;
    ev->kind = PG_EVENT_ERROR;
    ev->pid = pid_tgid >> 32;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->uid = uid;
    ev->body_len = n;
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    emit(ctx, ev, __builtin_offsetof(struct pg_error_event_t, body) + n);
    return 0;
}

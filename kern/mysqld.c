/* ecapture "mysqld" module: the commands a MySQL or MariaDB server dispatches.
 *
 * dispatch_command() runs once per command a client sends (COM_QUERY, COM_STMT_PREPARE,
 * COM_STMT_EXECUTE, ...). Its uprobe sends the command's payload whole, in chunks, from a
 * per-CPU slot (a query is usually far larger than the 512-byte stack); its uretprobe sends
 * how the command ended. In between, the thread's call state (a mysqld_done_event_t kept in
 * mysqld_calls) collects what other probes see on the same thread:
 *   net_write_command()  the error packet the client is sent (command byte 0xff): the
 *                     command's status, error number and message, as the client gets them;
 *   my_message_sql()  every error the server raises, counted: some are handled and never
 *                     reach the client (DROP TABLE IF EXISTS, a stored procedure's handler);
 *   my_net_write()    the server's reply to COM_STMT_PREPARE: the statement id it gave,
 *                     its parameter and column counts (the 12-byte COM_STMT_PREPARE_OK).
 * A call that never returns normally (unwound) has no uretprobe: when the thread enters
 * dispatch_command() again, its stale state is sent with returned = 0.
 *
 * Compiled after kern/prelude.c as one text (emit(), traced(), read_user() come from
 * there). Knobs, as -D flags from ecapture/modules/mysqld.py:
 *   MYSQLD_ABI         MYSQLD_ABI_PACKET or MYSQLD_ABI_COM_DATA, from dispatch_command's
 *                      mangled name
 *   THD_ID_OFFSET      offset of the connection id in THD, read from thd_get_thread_id()
 *   THD_ID_SIZE        its size, 4 or 8
 *   MYSQLD_NOT_ERROR   my_message_sql() flags that make a message a note or warning
 *   RETVAL_BOOL        dispatch_command() returns bool (MySQL 5.7+), not an int
 *   MYSQLD_MAX_CHUNKS  chunks per payload; a longer payload is cut, and says so
 */
#include "mysqld.h"

#ifndef MYSQLD_ABI
#define MYSQLD_ABI MYSQLD_ABI_PACKET
#endif
#ifndef THD_ID_OFFSET
#define THD_ID_OFFSET 0
#endif
#ifndef THD_ID_SIZE
#define THD_ID_SIZE 8
#endif
#ifndef MYSQLD_NOT_ERROR
#define MYSQLD_NOT_ERROR 0
#endif
#ifndef RETVAL_BOOL
#define RETVAL_BOOL 0
#endif
#ifndef MYSQLD_MAX_CHUNKS
#define MYSQLD_MAX_CHUNKS 64 /* 1 MiB */
#endif

/* enum_server_command values this program looks at (the same in MySQL and MariaDB). */
#define COM_INIT_DB 2
#define COM_QUERY 3
#define COM_STMT_PREPARE 22
#define COM_STMT_EXECUTE 23
#define COM_STMT_SEND_LONG_DATA 24
#define COM_STMT_CLOSE 25
#define COM_STMT_RESET 26
#define COM_STMT_FETCH 28

/* The bytes of COM_STMT_PREPARE_OK: 0x00, id (4), columns (2), params (2), 0, warnings (2) */
#define PREPARE_OK_LEN 12

BPF_PERCPU_ARRAY(mysqld_query_heap, struct mysqld_query_event_t, SCRATCH_SLOTS);
BPF_PERCPU_ARRAY(mysqld_done_heap, struct mysqld_done_event_t, SCRATCH_SLOTS);
/* tid -> the command it is inside. LRU: a thread that dies inside a call leaves no trace. */
BPF_TABLE("lru_hash", u32, struct mysqld_done_event_t, mysqld_calls, 4096);

/* One chunk of the payload; 0 when the kernel would not copy it (then an empty chunk at
 * this offset tells user space the rest is missing, instead of nothing). */
static __always_inline int mysqld_send_chunk(void *ctx, struct mysqld_query_event_t *ev,
                                             u64 buf, u64 off, u32 n) {
    ev->offset = (u32)off;
    ev->data_len = n;
    if (read_user(ev->data, n, buf + off) != 0) {
        ev->data_len = 0;
        emit(ctx, ev, offsetof(struct mysqld_query_event_t, data));
        return 0;
    }
    emit(ctx, ev, offsetof(struct mysqld_query_event_t, data) + n);
    return 1;
}

/* Where the payload is and how long, from dispatch_command's arguments. */
static __always_inline void mysqld_payload(struct pt_regs *ctx, u32 command, u64 *buf,
                                           u32 *len) {
#if MYSQLD_ABI == MYSQLD_ABI_PACKET
    *buf = PT_REGS_PARM3(ctx);
    *len = (u32)PT_REGS_PARM4(ctx);
#else
    /* COM_DATA is a union; the members used here start with {const char *; uint} (query,
     * prepare, init_db) or with the statement id (the COM_STMT_* commands). */
    u64 data = PT_REGS_PARM2(ctx);
    *buf = 0;
    *len = 0;
    if (command == COM_QUERY || command == COM_STMT_PREPARE || command == COM_INIT_DB) {
        struct { u64 ptr; u32 length; u32 pad; } text = {};
        if (read_user(&text, sizeof(text), data) == 0) {
            *buf = text.ptr;
            *len = text.length;
        }
    } else if (command == COM_STMT_EXECUTE || command == COM_STMT_SEND_LONG_DATA ||
               command == COM_STMT_CLOSE || command == COM_STMT_RESET ||
               command == COM_STMT_FETCH) {
        *buf = data; /* little-endian: the id's low 4 bytes come first, ulong or uint */
        *len = 4;
    }
#endif
}

int mysqld_dispatch_enter(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!traced(id, uid))
        return 0;
    u32 tid = (u32)id;
    u64 now = bpf_ktime_get_ns();
#if MYSQLD_ABI == MYSQLD_ABI_PACKET
    u32 command = (u32)PT_REGS_PARM1(ctx);
    u64 thd = PT_REGS_PARM2(ctx);
#else
    u32 command = (u32)PT_REGS_PARM3(ctx);
    u64 thd = PT_REGS_PARM1(ctx);
#endif
    /* A call of this thread that never returned (unwound past the uretprobe): say so. */
    struct mysqld_done_event_t *stale = mysqld_calls.lookup(&tid);
    if (stale) {
        u32 n = stale->msg_len;
        if (n > MYSQLD_MSG_MAX)
            n = MYSQLD_MSG_MAX;
        stale->returned = 0;
        stale->end_ns = 0;
        emit(ctx, stale, offsetof(struct mysqld_done_event_t, msg) + n);
        mysqld_calls.delete(&tid);
    }
    u32 slot = scratch_slot();
    struct mysqld_done_event_t *call = mysqld_done_heap.lookup(&slot);
    struct mysqld_query_event_t *ev = mysqld_query_heap.lookup(&slot);
    if (!call || !ev)
        return 0;
    u64 conn = 0;
    read_user(&conn, THD_ID_SIZE, thd + THD_ID_OFFSET);

    call->kind = MYSQLD_EVENT_DONE;
    call->pid = id >> 32;
    call->tid = tid;
    call->start_ns = now;
    call->end_ns = 0;
    call->command = command;
    call->error = 0;
    call->raised = 0;
    call->stmt_id = 0;
    call->params = 0;
    call->columns = 0;
    call->retval = 0;
    call->returned = 0;
    call->prepared = 0;
    call->reserved = 0;
    call->msg_len = 0;
    call->reserved2 = 0;
    mysqld_calls.update(&tid, call);

    u64 buf = 0;
    u32 total = 0;
    mysqld_payload(ctx, command, &buf, &total);
    ev->kind = MYSQLD_EVENT_QUERY;
    ev->pid = id >> 32;
    ev->tid = tid;
    ev->uid = uid;
    ev->start_ns = now;
    ev->conn = conn;
    ev->command = command;
    ev->total_len = total;
    ev->abi = MYSQLD_ABI;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    if (total == 0) {
        ev->offset = 0;
        ev->data_len = 0;
        emit(ctx, ev, offsetof(struct mysqld_query_event_t, data));
        return 0;
    }
#define MYSQLD_SEND_CHUNK(off, n) mysqld_send_chunk(ctx, ev, buf, off, n)
    ECAP_FOR_PIECES(total, MYSQLD_CHUNK_SIZE, MYSQLD_MAX_CHUNKS, MYSQLD_SEND_CHUNK)
#undef MYSQLD_SEND_CHUNK
    return 0;
}

int mysqld_dispatch_return(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mysqld_done_event_t *call = mysqld_calls.lookup(&tid);
    if (!call)
        return 0; /* not traced, or entered before we attached */
    call->end_ns = bpf_ktime_get_ns();
    call->returned = 1;
#if RETVAL_BOOL
    call->retval = (s32)(PT_REGS_RC(ctx) & 0xff);
#else
    call->retval = (s32)PT_REGS_RC(ctx);
#endif
    u32 n = call->msg_len;
    if (n > MYSQLD_MSG_MAX)
        n = MYSQLD_MSG_MAX;
    emit(ctx, call, offsetof(struct mysqld_done_event_t, msg) + n);
    mysqld_calls.delete(&tid);
    return 0;
}

/* my_message_sql(uint error, const char *str, myf flags): every error the server raises
 * (and, in MariaDB, notes and warnings, told apart by their flags). */
int mysqld_message_enter(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mysqld_done_event_t *call = mysqld_calls.lookup(&tid);
    if (!call)
        return 0;
    if (PT_REGS_PARM3(ctx) & MYSQLD_NOT_ERROR)
        return 0;
    call->raised += 1;
    return 0;
}

/* net_write_command(NET *, uchar command, const uchar *header, size_t head_len,
 *                   const uchar *packet, size_t len): with command 0xff, the error packet
 * the client gets: error number (2 bytes), '#' and the SQLSTATE (5 bytes), the message. */
int mysqld_net_command_enter(struct pt_regs *ctx) {
    if ((u8)PT_REGS_PARM2(ctx) != 0xff)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mysqld_done_event_t *call = mysqld_calls.lookup(&tid);
    if (!call || call->error != 0)
        return 0;
    u64 packet = PT_REGS_PARM5(ctx);
    u64 len = PT_REGS_PARM6(ctx);
    u8 head[8] = {};
    if (len < 2 || read_user(head, len < 8 ? 2 : 8, packet) != 0)
        return 0;
    call->error = head[0] | (u32)head[1] << 8;
    u64 at = len >= 8 && head[2] == '#' ? 8 : 2; /* without SQLSTATE before protocol 4.1 */
    u64 n = len - at;
    if (n > MYSQLD_MSG_MAX)
        n = MYSQLD_MSG_MAX;
    if (n == 0 || read_user(call->msg, (u32)n, packet + at) != 0)
        n = 0;
    call->msg_len = (u32)n;
    return 0;
}

/* my_net_write(NET *, const uchar *packet, size_t len): the first 12-byte packet starting
 * with 0x00 that a COM_STMT_PREPARE writes is its COM_STMT_PREPARE_OK. */
int mysqld_net_write_enter(struct pt_regs *ctx) {
    if (PT_REGS_PARM3(ctx) != PREPARE_OK_LEN)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mysqld_done_event_t *call = mysqld_calls.lookup(&tid);
    if (!call || call->command != COM_STMT_PREPARE || call->prepared)
        return 0;
    u8 ok[PREPARE_OK_LEN] = {};
    if (read_user(ok, PREPARE_OK_LEN, PT_REGS_PARM2(ctx)) != 0 || ok[0] != 0)
        return 0;
    call->stmt_id = ok[1] | (u32)ok[2] << 8 | (u32)ok[3] << 16 | (u32)ok[4] << 24;
    call->columns = ok[5] | (u16)ok[6] << 8;
    call->params = ok[7] | (u16)ok[8] << 8;
    call->prepared = 1;
    return 0;
}

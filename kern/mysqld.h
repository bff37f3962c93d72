/* Kernel-to-user event structs of the "mysqld" module.
 * Declared again in ecapture/structs/mysqld.py with the same names, order and offsets. */
#ifndef ECAPTURE_MYSQLD_H
#define ECAPTURE_MYSQLD_H

#include "ecapture.h"

/* Kinds on the mysqld module's "events" map. */
#define MYSQLD_EVENT_QUERY 1
#define MYSQLD_EVENT_DONE 2

/* A command's payload travels in chunks of this size, in as many events as it takes. */
#define MYSQLD_CHUNK_SIZE 16384
/* The server's own limit on an error message (MYSQL_ERRMSG_SIZE). */
#define MYSQLD_MSG_MAX 512

/* How dispatch_command() takes its arguments, decided from its mangled name. Macros, not an
 * enum: kern/mysqld.c compares them in #if. */
/* MariaDB, MySQL 5.6: (enum_server_command, THD *, char *packet, uint length, ...) */
#define MYSQLD_ABI_PACKET 1
/* MySQL 5.7, 8.x: (THD *, const COM_DATA *, enum_server_command); the payload sent is
 * rebuilt from COM_DATA: the text of a query, prepare or init_db; the 4-byte statement id
 * of the COM_STMT_* commands */
#define MYSQLD_ABI_COM_DATA 2

/* One chunk of the payload of one command the server dispatched, sent when
 * dispatch_command() is entered (the server reuses the packet's buffer for its answer, so
 * it must be read then). A payload longer than MYSQLD_CHUNK_SIZE comes as several chunks
 * with increasing `offset`; an empty one as one chunk with data_len 0. */
struct mysqld_query_event_t {
    __u32 kind;         /* MYSQLD_EVENT_QUERY */
    __u32 pid;          /* tgid of the server */
    __u64 start_ns;     /* bpf_ktime_get_ns() at entry; with pid and tid names the call */
    __u64 conn;         /* the connection id (the THD's thread_id) */
    __u32 tid;
    __u32 uid;
    __u32 command;      /* enum_server_command: 3 COM_QUERY, 22 COM_STMT_PREPARE, ... */
    __u32 total_len;    /* bytes of the whole payload */
    __u32 offset;       /* where this chunk starts within the payload */
    __u32 data_len;     /* bytes of data[] that are valid and sent */
    __u8 abi;           /* MYSQLD_ABI_* */
    __u8 reserved[7];
    char comm[ECAP_COMM_LEN];
    __u8 data[MYSQLD_CHUNK_SIZE]; /* only data_len bytes are sent */
};

/* The end of one dispatched command, sent when dispatch_command() returns, or when the
 * thread enters it again without a return having been seen (returned = 0). */
struct mysqld_done_event_t {
    __u32 kind;         /* MYSQLD_EVENT_DONE */
    __u32 pid;
    __u64 start_ns;     /* as in the command's mysqld_query_event_t */
    __u64 end_ns;       /* bpf_ktime_get_ns() at return; 0 when returned = 0 */
    __u32 tid;
    __u32 command;
    __u32 error;        /* the error the client was sent (its error packet), 0: none */
    __u32 raised;       /* errors the server raised (my_message_sql), handled ones too */
    __u32 stmt_id;      /* COM_STMT_PREPARE: the id the server gave the statement */
    __u16 params;       /* COM_STMT_PREPARE: the statement's parameter count */
    __u16 columns;      /* COM_STMT_PREPARE: its result's column count */
    __s32 retval;       /* dispatch_command()'s return value (not an SQL status) */
    __u8 returned;      /* 1: the uretprobe ran; 0: the call never returned normally */
    __u8 prepared;      /* 1: stmt_id, params and columns were seen in the server's reply */
    __u16 reserved;
    __u32 msg_len;      /* bytes of msg[] that are valid and sent */
    __u32 reserved2;
    __u8 msg[MYSQLD_MSG_MAX]; /* that error's message, only msg_len bytes are sent */
};

#endif

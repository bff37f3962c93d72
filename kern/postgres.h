/* Kernel-to-user event structs of the "postgres" module.
 * Declared again in ecapture/structs/postgres.py with the same names, order and offsets. */
#ifndef ECAPTURE_POSTGRES_H
#define ECAPTURE_POSTGRES_H

#include "ecapture.h"

/* Kinds on the postgres module's map (numbered per map). */
#define PG_EVENT_PARSE 1   /* pg_parse_query(): the SQL text of one protocol message */
#define PG_EVENT_EXECUTE 2 /* PortalRun() of an extended-protocol Execute */
#define PG_EVENT_ERROR 3   /* pq_endmessage() of an ErrorResponse to the client */

/* Statements up to PG_TEXT_MAX - 1 bytes arrive whole; longer ones are cut and flagged.
 * 32 KiB less room for an event's header: a per-CPU map's value is at most 32 KiB (the
 * kernel's PCPU_MIN_UNIT_SIZE), and a perf buffer's sample at most 64 KiB. */
#define PG_TEXT_MAX (32768 - 256)

/* NAMEDATALEN: statement and portal names are identifiers, at most 63 bytes. */
#define PG_NAME_MAX 64

/* An ErrorResponse's first bytes: severity, SQLSTATE and message come first. */
#define PG_ERROR_MAX 1024

/* One call of pg_parse_query(): the whole text of a simple-protocol Query message, or of an
 * extended-protocol Parse message, or a nested parse (a SQL function's body). */
struct pg_parse_event_t {
    __u32 kind;         /* PG_EVENT_PARSE */
    __u32 pid;          /* tgid of the backend */
    __u64 timestamp_ns; /* bpf_ktime_get_ns() at pg_parse_query()'s entry */
    __u32 uid;
    __u32 text_len;     /* bytes of text[] that are valid and sent, no NUL */
    __u8 msg_type;      /* the protocol message being handled: 'Q', 'P', ...; 0 unknown */
    __u8 nested;        /* 1: not the first parse of that message */
    __u8 truncated;     /* 1 if the text was longer than PG_TEXT_MAX - 1 bytes */
    __u8 reserved[5];
    char comm[ECAP_COMM_LEN];
    __u8 text[PG_TEXT_MAX]; /* only text_len bytes are sent */
};

/* One top-level PortalRun() whose source text is not the one the backend parsed last: an
 * Execute of the extended protocol (a simple query's statements run on the parsed text
 * itself and are not sent: their parse event carried it). */
struct pg_execute_event_t {
    __u32 kind;         /* PG_EVENT_EXECUTE */
    __u32 pid;
    __u64 timestamp_ns; /* at PortalRun()'s entry */
    __u32 uid;
    __u32 text_len;
    __u8 msg_type;      /* 'E' for an Execute message; 0 unknown */
    __u8 truncated;
    __u8 reserved[6];
    char comm[ECAP_COMM_LEN];
    char portal[PG_NAME_MAX];    /* portal->name; "" is the unnamed portal */
    char statement[PG_NAME_MAX]; /* portal->prepStmtName; "" for the unnamed statement */
    __u8 text[PG_TEXT_MAX];      /* portal->sourceText; only text_len bytes are sent */
};

/* An ErrorResponse the backend sends its client: the body of the protocol message, a list
 * of fields, each a type byte and a NUL-terminated string ('S' severity, 'C' SQLSTATE, 'M'
 * message, 'D' detail, 'H' hint, 'P' position, ...), ended by a NUL. */
struct pg_error_event_t {
    __u32 kind;         /* PG_EVENT_ERROR */
    __u32 pid;
    __u64 timestamp_ns; /* at pq_endmessage()'s entry: the error is being sent */
    __u32 uid;
    __u32 body_len;     /* bytes of body[] that are valid and sent */
    __u8 truncated;     /* 1 if the message was longer than PG_ERROR_MAX bytes */
    __u8 reserved[7];
    char comm[ECAP_COMM_LEN];
    __u8 body[PG_ERROR_MAX]; /* only body_len bytes are sent */
};

#endif

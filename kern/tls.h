/* Kernel-to-user event structs of the TLS family: what every TLS library module sends.
 * Declared again in ecapture/structs/tls.py with the same names, order and offsets. The
 * names keep their OpenSSL-era spelling: recordings identify structs by name. */
#ifndef ECAPTURE_TLS_H
#define ECAPTURE_TLS_H

#include "ecapture.h"

#ifndef TLS_CHUNK_SIZE
#define TLS_CHUNK_SIZE 16384
#endif

/* Kinds on the TLS modules' "events" map; a library's own structs take other numbers. */
enum tls_event_kind {
    TLS_EVENT_DATA = 1,
    TLS_EVENT_CONN = 2,
    TLS_EVENT_EXEC = 8, /* 3 to 7 are libraries' own */
};

enum tls_direction {
    TLS_DIR_READ = 0,  /* plaintext the program received */
    TLS_DIR_WRITE = 1, /* plaintext the program sent */
};

/* One chunk of the plaintext of one TLS read or write call. A call returning more than
 * TLS_CHUNK_SIZE bytes is emitted as several chunks with increasing `offset`; user space
 * joins them. Only the header plus data_len bytes of `data` are sent. */
struct ssl_data_event_t {
    __u32 kind;         /* TLS_EVENT_DATA */
    __u32 pid;          /* tgid */
    __u64 timestamp_ns; /* bpf_ktime_get_ns() at the function's return (CLOCK_MONOTONIC) */
    __u64 start_ns;     /* bpf_ktime_get_ns() at the function's entry: identifies the call */
    __u64 ssl;          /* the library's connection object (SSL*, ...): the connection id */
    __u32 tid;
    __u32 uid;
    __s32 fd;           /* socket fd seen in the call's socket I/O, -1 if none seen yet */
    __s32 version;      /* TLS version (0x0303 TLS 1.2, 0x0304 TLS 1.3), 0 if unknown */
    __u32 total_len;    /* plaintext bytes the call returned */
    __u32 offset;       /* where this chunk starts within the call's plaintext */
    __u32 data_len;     /* bytes of data[] that are valid and sent */
    __u8 direction;     /* enum tls_direction */
    __u8 func;          /* which library function, numbered by the library module */
    __u16 reserved;
    char comm[ECAP_COMM_LEN];
    __u8 data[TLS_CHUNK_SIZE];
};

enum conn_kind {
    CONN_CONNECT = 0, /* the process connected: local = client side */
    CONN_ACCEPT = 1,  /* the process accepted: local = server side */
    CONN_CLOSE = 2,   /* the socket reached TCP_CLOSE; only sock/pid/fd are meaningful */
    CONN_PROC = 3,    /* recordings of format 1 only: user space read an older connection
                         from /proc (now a record of its own kind) */
};

/* A TCP connection of a traced process: which fd and 4-tuple it has. Built from tracepoints
 * only (no kprobes: not every kernel has them), see kern/tls.c. */
struct conn_event_t {
    __u32 kind;         /* TLS_EVENT_CONN */
    __u32 pid;
    __u64 timestamp_ns;
    __u64 sock;         /* kernel struct sock address, the connection's identity */
    __u32 tid;
    __u32 uid;
    __s32 fd;           /* -1 when the kernel could not tell */
    __u16 family;       /* AF_INET (2) or AF_INET6 (10); 0: addresses unknown */
    __u8 conn;          /* enum conn_kind */
    __u8 reserved;
    __u16 lport;        /* host byte order */
    __u16 rport;        /* host byte order */
    __u8 laddr[16];     /* IPv4 in the first 4 bytes, network order */
    __u8 raddr[16];
    char comm[ECAP_COMM_LEN];
    __u32 reserved2;    /* explicit tail padding: sizeof is a multiple of 8 */
};

/* A traced process started a program (sched_process_exec): user space looks at what it
 * maps, and attaches to a library file that no probe is on yet (a container's copy). */
struct exec_event_t {
    __u32 kind;         /* TLS_EVENT_EXEC */
    __u32 pid;
    __u64 timestamp_ns;
    __u32 uid;
    __u32 reserved;
    char comm[ECAP_COMM_LEN];
};

#endif

/* Kernel-to-user event structs of the OpenSSL ("tls") module.
 * Declared again in ecapture/structs/openssl.py with the same names, order and offsets. */
#ifndef ECAPTURE_OPENSSL_H
#define ECAPTURE_OPENSSL_H

#include "ecapture.h"

#ifndef SSL_CHUNK_SIZE
#define SSL_CHUNK_SIZE 16384
#endif

enum ssl_direction {
    SSL_DIR_READ = 0,  /* plaintext the program received (SSL_read*) */
    SSL_DIR_WRITE = 1, /* plaintext the program sent (SSL_write*) */
};

enum ssl_func {
    SSL_FUNC_READ = 0,
    SSL_FUNC_WRITE = 1,
    SSL_FUNC_READ_EX = 2,
    SSL_FUNC_WRITE_EX = 3,
};

/* One chunk of the plaintext of one SSL_read/SSL_write call. A call returning more than
 * SSL_CHUNK_SIZE bytes is emitted as several chunks with increasing `offset`; user space
 * joins them. Only the header plus data_len bytes of `data` are sent. */
struct ssl_data_event_t {
    __u32 kind;         /* ECAP_EVENT_SSL_DATA */
    __u32 pid;          /* tgid */
    __u64 timestamp_ns; /* bpf_ktime_get_ns() at the function's return (CLOCK_MONOTONIC) */
    __u64 start_ns;     /* bpf_ktime_get_ns() at the function's entry: identifies the call */
    __u64 ssl;          /* the SSL* pointer: identifies the TLS connection in its process */
    __u32 tid;
    __u32 uid;
    __s32 fd;           /* socket fd seen in the call's syscalls, -1 if none seen yet */
    __s32 version;      /* SSL->version (0x0303 TLS 1.2, 0x0304 TLS 1.3), 0 if unknown */
    __u32 total_len;    /* plaintext bytes the call returned */
    __u32 offset;       /* where this chunk starts within the call's plaintext */
    __u32 data_len;     /* bytes of data[] that are valid and sent */
    __u8 direction;     /* enum ssl_direction */
    __u8 func;          /* enum ssl_func */
    __u16 reserved;
    char comm[ECAP_COMM_LEN];
    __u8 data[SSL_CHUNK_SIZE];
};

enum conn_kind {
    CONN_CONNECT = 0, /* the process connected: local = client side */
    CONN_ACCEPT = 1,  /* the process accepted: local = server side */
    CONN_CLOSE = 2,   /* the socket reached TCP_CLOSE; only sock/pid/fd are meaningful */
    CONN_PROC = 3,    /* never from the kernel: user space read an older connection from
                         /proc (local/remote known, client/server side not) */
};

/* A TCP connection of a traced process: which fd and 4-tuple it has. Built from tracepoints
 * only (syscalls:sys_{enter,exit}_{connect,accept,accept4} and sock:inet_sock_set_state),
 * because kprobes are not available on every kernel. */
struct conn_event_t {
    __u32 kind;         /* ECAP_EVENT_CONN */
    __u32 pid;
    __u64 timestamp_ns;
    __u64 sock;         /* kernel struct sock address, the connection's identity */
    __u32 tid;
    __u32 uid;
    __s32 fd;
    __u16 family;       /* AF_INET (2) or AF_INET6 (10) */
    __u8 conn;          /* enum conn_kind */
    __u8 reserved;
    __u16 lport;        /* host byte order */
    __u16 rport;        /* host byte order */
    __u8 laddr[16];     /* IPv4 in the first 4 bytes, network order */
    __u8 raddr[16];
    char comm[ECAP_COMM_LEN];
    __u32 reserved2;    /* explicit tail padding: sizeof is a multiple of 8 */
};

/* The secrets of one TLS connection, read from OpenSSL's structs once per (pid, SSL*) at
 * the first successful SSL_read/SSL_write, when the handshake is done. Offsets differ per
 * OpenSSL version and come as -D cflags from ecapture/modules/openssl_offsets.py. */
struct master_secret_event_t {
    __u32 kind;         /* ECAP_EVENT_MASTER_SECRET */
    __u32 pid;
    __u64 timestamp_ns;
    __u64 ssl;
    __s32 version;      /* SSL->version */
    __u32 cipher_id;    /* SSL_SESSION->cipher->id, e.g. 0x03001301 */
    __u8 client_random[32];
    __u8 master_key[48];              /* TLS <= 1.2 */
    __u8 handshake_secret[64];        /* TLS 1.3, from here on */
    __u8 handshake_traffic_hash[64];
    __u8 client_app_traffic_secret[64];
    __u8 server_app_traffic_secret[64];
    __u8 exporter_master_secret[64];
    char comm[ECAP_COMM_LEN];
};

/* A packet seen by the TC classifier (pcap model). The packet's first caplen bytes follow
 * this header in the perf sample (bpf_perf_event_output with the skb as context). */
struct packet_event_t {
    __u32 kind;         /* ECAP_EVENT_PACKET */
    __u32 ifindex;
    __u64 timestamp_ns;
    __u32 len;          /* skb->len */
    __u32 caplen;       /* bytes that follow */
    __u32 direction;    /* 0 ingress, 1 egress */
    __u32 reserved;
};

#endif

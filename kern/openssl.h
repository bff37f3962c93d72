/* The OpenSSL library's own kernel-to-user struct (everything else an OpenSSL capture
 * sends is the TLS family's, kern/tls.h). Declared again in ecapture/structs/openssl.py. */
#ifndef ECAPTURE_OPENSSL_H
#define ECAPTURE_OPENSSL_H

#include "ecapture.h"

#define OPENSSL_EVENT_MASTER_SECRET 3 /* on the "events" map, beside kern/tls.h's kinds */

/* OpenSSL's functions, as the ssl_data_event_t func field numbers them. */
enum openssl_func {
    SSL_FUNC_READ = 0,
    SSL_FUNC_WRITE = 1,
    SSL_FUNC_READ_EX = 2,
    SSL_FUNC_WRITE_EX = 3,
    SSL_FUNC_BIO_READ = 4,  /* the SSL BIO's read method (BIO_read & co. on an SSL BIO) */
    SSL_FUNC_BIO_WRITE = 5, /* its write method */
};

/* The secrets of one TLS connection, read from OpenSSL's structs once per (pid, SSL*) at
 * the first successful SSL_read/SSL_write, when the handshake is done. Offsets differ per
 * OpenSSL version and come as -D cflags from ecapture/modules/openssl_offsets.py. */
struct master_secret_event_t {
    __u32 kind;         /* OPENSSL_EVENT_MASTER_SECRET */
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

#endif

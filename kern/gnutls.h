/* The GnuTLS library's own kernel-to-user struct (everything else a GnuTLS capture sends is
 * the TLS family's, kern/tls.h). Declared again in ecapture/structs/gnutls.py. */
#ifndef ECAPTURE_GNUTLS_H
#define ECAPTURE_GNUTLS_H

#include "ecapture.h"

/* On the "events" map, beside kern/tls.h's kinds 1 and 2 (3 is OpenSSL's secrets). */
#define GNUTLS_EVENT_SECRETS 5

/* GnuTLS's functions, as the ssl_data_event_t func field numbers them. */
enum gnutls_func {
    GNUTLS_FUNC_RECV = 0,       /* gnutls_record_recv */
    GNUTLS_FUNC_SEND = 1,       /* gnutls_record_send */
    GNUTLS_FUNC_RECV_SEQ = 2,   /* gnutls_record_recv_seq (DTLS servers) */
    GNUTLS_FUNC_SEND2 = 3,      /* gnutls_record_send2, when called directly */
    GNUTLS_FUNC_SEND_RANGE = 4, /* gnutls_record_send_range (length hiding) */
    GNUTLS_FUNC_SEND_EARLY = 5, /* gnutls_record_send_early_data (TLS 1.3 0-RTT, client) */
    GNUTLS_FUNC_RECV_EARLY = 6, /* gnutls_record_recv_early_data (TLS 1.3 0-RTT, server) */
};

#define GNUTLS_RANDOM_SIZE 32
#define GNUTLS_MASTER_SIZE 48
#define GNUTLS_MAX_HASH_SIZE 64

/* The secrets of one TLS session, read from struct gnutls_session_int when gnutls_handshake
 * returns 0 (and, for a session whose handshake was not seen, at its first successful
 * record call). Offsets differ per GnuTLS version and come as -D cflags from
 * ecapture/modules/gnutls_offsets.py. The TLS 1.3 secrets are GnuTLS's own copies of what
 * SSLKEYLOGFILE calls them; only the cipher's hash length of each is meaningful. */
struct gnutls_secrets_event_t {
    __u32 kind;         /* GNUTLS_EVENT_SECRETS */
    __u32 pid;
    __u64 timestamp_ns;
    __u64 session;      /* gnutls_session_t */
    __u32 tid;
    __u32 uid;
    __s32 protocol;     /* gnutls_protocol_t: 4 TLS 1.2, 5 TLS 1.3 (not the wire number) */
    __s32 prf_mac;      /* gnutls_mac_algorithm_t of the PRF: 6 SHA256, 7 SHA384 */
    __u8 client_random[GNUTLS_RANDOM_SIZE];
    __u8 master_secret[GNUTLS_MASTER_SIZE];                   /* TLS <= 1.2 */
    __u8 client_early_traffic_secret[GNUTLS_MAX_HASH_SIZE];   /* TLS 1.3, from here on */
    __u8 client_handshake_traffic_secret[GNUTLS_MAX_HASH_SIZE];
    __u8 server_handshake_traffic_secret[GNUTLS_MAX_HASH_SIZE];
    __u8 client_traffic_secret_0[GNUTLS_MAX_HASH_SIZE];
    __u8 server_traffic_secret_0[GNUTLS_MAX_HASH_SIZE];
    __u8 exporter_secret[GNUTLS_MAX_HASH_SIZE];
    char comm[ECAP_COMM_LEN];
};

#endif

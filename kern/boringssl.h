/* The BoringSSL library's own kernel-to-user struct (everything else a BoringSSL capture
 * sends is the TLS family's, kern/tls.h). Declared again in ecapture/structs/boringssl.py. */
#ifndef ECAPTURE_BORINGSSL_H
#define ECAPTURE_BORINGSSL_H

#include "ecapture.h"

#define BORINGSSL_EVENT_SECRET 6 /* on the "events" map: 1, 2 are the family's, 3 OpenSSL's */

/* Which secret an event carries: the key-log label it is written under. */
enum boringssl_secret_label {
    BSSL_LABEL_CLIENT_RANDOM = 0,  /* TLS <= 1.2: the session's master secret */
    BSSL_LABEL_CLIENT_EARLY = 1,   /* TLS 1.3 "c e traffic" */
    BSSL_LABEL_CLIENT_HS = 2,      /* "c hs traffic" */
    BSSL_LABEL_SERVER_HS = 3,      /* "s hs traffic" */
    BSSL_LABEL_CLIENT_AP = 4,      /* "c ap traffic": CLIENT_TRAFFIC_SECRET_0 */
    BSSL_LABEL_SERVER_AP = 5,      /* "s ap traffic": SERVER_TRAFFIC_SECRET_0 */
    BSSL_LABEL_EXPORTER = 6,       /* "exp master" */
};

#define BSSL_SECRET_MAX 48 /* SSL_MAX_MD_SIZE: SHA-384 */

/* One secret of one TLS connection, with its real length. TLS 1.3 secrets are taken as
 * BoringSSL derives them (its HKDF-Expand-Label calls, during the handshake); the TLS 1.2
 * master secret is read from the session at the connection's first read or write. */
struct boringssl_secret_event_t {
    __u32 kind;         /* BORINGSSL_EVENT_SECRET */
    __u32 pid;
    __u64 timestamp_ns;
    __u64 ssl;          /* the SSL* of the connection */
    __u32 tid;
    __u16 version;      /* negotiated TLS version: 0x0303, 0x0304 */
    __u8 label;         /* enum boringssl_secret_label */
    __u8 secret_len;    /* bytes of secret[] that are the secret (32 or 48) */
    __u8 client_random[32];
    __u8 secret[BSSL_SECRET_MAX];
    char comm[ECAP_COMM_LEN];
};

#endif

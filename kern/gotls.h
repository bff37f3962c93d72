/* The gotls module's own kernel-to-user struct (everything else a Go capture sends is the
 * TLS family's, kern/tls.h). Declared again in ecapture/structs/gotls.py. */
#ifndef ECAPTURE_GOTLS_H
#define ECAPTURE_GOTLS_H

#include "ecapture.h"

#define GOTLS_EVENT_KEYLOG 7 /* on the "events" map: 1, 2 are the family's */

#define GOTLS_LABEL_MAX 32  /* "CLIENT_HANDSHAKE_TRAFFIC_SECRET" is the longest, 31 */
#define GOTLS_RANDOM_MAX 32 /* a ClientHello random */
#define GOTLS_SECRET_MAX 64 /* SHA-384 secrets are 48 bytes: room to spare */

/* Which fields the kernel could not read (go_keylog_event_t.unread). */
#define GOTLS_UNREAD_LABEL 0x1
#define GOTLS_UNREAD_RANDOM 0x2
#define GOTLS_UNREAD_SECRET 0x4

/* One key-log line as crypto/tls hands it to (*Config).writeKeyLog(label, clientRandom,
 * secret): Go formats it for its KeyLogWriter, whether or not the program set one. The
 * lengths are what Go passed; a field longer than its array is cut (and then refused by
 * user space, which never writes a cut secret). The label is a string constant in the
 * program's read-only data, whose page the process may not have touched yet: the kernel
 * cannot fault it in, so its address travels too, for user space to read it (see
 * GoTLSModule.observe). */
struct go_keylog_event_t {
    __u32 kind;           /* GOTLS_EVENT_KEYLOG */
    __u32 pid;
    __u64 timestamp_ns;
    __u32 tid;
    __u32 uid;
    __u32 label_len;
    __u32 client_random_len;
    __u32 secret_len;
    __u32 unread;         /* GOTLS_UNREAD_* bits */
    __u64 label_ptr;      /* the label's address in the process */
    char label[GOTLS_LABEL_MAX];
    __u8 client_random[GOTLS_RANDOM_MAX];
    __u8 secret[GOTLS_SECRET_MAX];
    char comm[ECAP_COMM_LEN];
};

#endif

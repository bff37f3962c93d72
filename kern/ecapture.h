/* Shared definitions for every ecapture eBPF program and for the host-compiler layout test.
 *
 * Structs that cross from kernel to user space live in per-module headers that include this
 * one. They must compile both under bcc (kernel headers) and with the host C compiler
 * (tests/unit/test_struct_layout.py compiles them with offsetof), so they use only the
 * fixed-width __u8..__u64 types from <linux/types.h>. Every event starts with a __u32 kind,
 * numbered per event map by the module's own header.
 */
#ifndef ECAPTURE_H
#define ECAPTURE_H

#include <linux/types.h>

#define ECAP_COMM_LEN 16

/* Kernel features arrive as -D flags from the live layer (ecapture/live/session.py), the
 * same for every module: USE_RINGBUF, RINGBUF_PAGES and HAVE_PROBE_READ_USER. */
#ifndef HAVE_PROBE_READ_USER
#define HAVE_PROBE_READ_USER 1
#endif
/* bpf_probe_read_user*() arrived in Linux 5.5; before it, the combined helpers read user
 * memory on x86 and arm64. Macros only, so they work from this header (bcc rewrites map
 * calls in the text it compiles only, never in headers; see kern/prelude.c). */
#if !HAVE_PROBE_READ_USER
#define bpf_probe_read_user bpf_probe_read
#define bpf_probe_read_user_str bpf_probe_read_str
#endif

/* The compiler forgets how v was computed, so the checks that follow bound the very
 * register that is used afterwards. */
#define ECAP_OPAQUE(v) asm volatile("" : "+r"(v))

/* Walk [0, total) in pieces of CHUNK bytes, at most MAXN of them, calling SEND(off, n)
 * for each; SEND is false when a piece could not be sent, which ends the walk. A macro, not
 * a function: SEND sends with a map, and bcc rewrites map calls only in .c text.
 *
 * Full pieces continue the loop and the last (partial) one ends it, so that every path
 * through an iteration either goes on with a known offset or stops: the verifier walks the
 * loop once (35k instructions for 256 pieces) instead of once per possible remainder
 * (340k). The last length is bounded where the verifier can see it, and in a form that
 * verifiers before 6.8 or so follow: clang would otherwise re-compute total - off after
 * the test ("R2 min value is negative") or fold the two tests of n into one range check
 * whose lower bound they lose ("size=0"). So it is n - 1, opaque to clang, tested once
 * against CHUNK and passed on as (n - 1) + 1, in [1, CHUNK]. */
#define ECAP_FOR_PIECES(total, CHUNK, MAXN, SEND)          \
    for (u32 piece_ = 0; piece_ < (MAXN); piece_++) {      \
        u64 off_ = (u64)piece_ * (CHUNK);                  \
        if (off_ >= (total))                               \
            break;                                         \
        if ((total) - off_ > (CHUNK)) {                    \
            if (!SEND(off_, (CHUNK)))                      \
                break;                                     \
            continue;                                      \
        }                                                  \
        u64 m_ = (total) - off_ - 1;                       \
        ECAP_OPAQUE(m_);                                   \
        if (m_ >= (CHUNK))                                 \
            break;                                         \
        SEND(off_, (u32)(m_ + 1));                         \
        break;                                             \
    }

#endif

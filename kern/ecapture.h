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

#endif

/* The packet program of the TLS modules' pcap model: a TC classifier that only watches.
 *
 * Compiled after kern/prelude.c as one text (see prelude.c), as a program of its own, so
 * that -m pcap works the same with every TLS module. It copies each packet into the event
 * buffer in PACKET_CHUNK_SIZE pieces (GSO packets on loopback exceed 64 KiB, more than one
 * perf sample can carry) and always returns TC_ACT_OK: it never drops or alters traffic.
 *
 * With a filter expression, the classifier attached to the interface is libpcap's filter
 * translated to eBPF (ecapture/bpfasm.py); it tail-calls into tc_ingress or tc_egress
 * through packet_capture only for the packets that match, so a busy interface costs only
 * the matching packets.
 */
#include <uapi/linux/pkt_cls.h>
#include "packets.h"

#ifndef MAX_PACKET_CHUNKS
#define MAX_PACKET_CHUNKS 32
#endif

BPF_PERCPU_ARRAY(packet_heap, struct packet_chunk_event_t, 1);
BPF_PROG_ARRAY(packet_capture, 2); /* 0: tc_ingress, 1: tc_egress, for the filter's tail call */

/* One piece of a packet; 0 when it could not be read. */
static __always_inline int send_piece(struct __sk_buff *skb, struct packet_chunk_event_t *ev,
                                      u32 off, u32 n) {
    ev->data_len = n;
    if (bpf_skb_load_bytes(skb, off, ev->data, n) != 0) {
        ev->data_len = 0; /* say where the packet stopped being readable */
        emit(skb, ev, offsetof(struct packet_chunk_event_t, data));
        return 0;
    }
    emit(skb, ev, offsetof(struct packet_chunk_event_t, data) + n);
    return 1;
}

static __always_inline int capture(struct __sk_buff *skb, u8 direction) {
    u32 zero = 0;
    struct packet_chunk_event_t *ev = packet_heap.lookup(&zero);
    if (!ev)
        return TC_ACT_OK;
    u64 len = skb->len;
    ev->kind = PACKET_EVENT_CHUNK;
    ev->ifindex = skb->ifindex;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->len = (u32)len;
    ev->direction = direction;
    ev->reserved[0] = ev->reserved[1] = ev->reserved[2] = 0;
    /* Full pieces continue and the last one ends the loop: see tls_send_data() in
     * kern/tls.c for why the verifier wants it this way. */
    for (u32 i = 0; i < MAX_PACKET_CHUNKS; i++) {
        u64 off = (u64)i * PACKET_CHUNK_SIZE;
        if (off >= len)
            break;
        ev->offset = (u32)off;
        if (len - off > PACKET_CHUNK_SIZE) {
            if (!send_piece(skb, ev, (u32)off, PACKET_CHUNK_SIZE))
                break;
            continue;
        }
        u64 n = len - off;
        /* Re-bound n where the verifier can see it: [1, PACKET_CHUNK_SIZE]. */
        if (n == 0 || n > PACKET_CHUNK_SIZE)
            break;
        send_piece(skb, ev, (u32)off, (u32)n);
        break;
    }
    return TC_ACT_OK;
}

int tc_ingress(struct __sk_buff *skb) { return capture(skb, 0); }
int tc_egress(struct __sk_buff *skb) { return capture(skb, 1); }

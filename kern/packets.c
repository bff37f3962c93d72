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

BPF_PERCPU_ARRAY(packet_heap, struct packet_chunk_event_t, SCRATCH_SLOTS);
BPF_PROG_ARRAY(packet_capture, 2); /* 0: tc_ingress, 1: tc_egress, for the filter's tail call */

/* One piece of a packet; 0 when it could not be read. */
static __always_inline int send_piece(struct __sk_buff *skb, struct packet_chunk_event_t *ev,
                                      u64 off, u32 n) {
    ev->offset = (u32)off;
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
    u32 slot = scratch_slot();
    struct packet_chunk_event_t *ev = packet_heap.lookup(&slot);
    if (!ev)
        return TC_ACT_OK;
    u64 len = skb->len;
    ev->kind = PACKET_EVENT_CHUNK;
    ev->ifindex = skb->ifindex;
    ev->timestamp_ns = bpf_ktime_get_ns();
    ev->len = (u32)len;
    ev->direction = direction;
    ev->reserved[0] = ev->reserved[1] = ev->reserved[2] = 0;
#define SEND_PIECE(off, n) send_piece(skb, ev, off, n)
    ECAP_FOR_PIECES(len, PACKET_CHUNK_SIZE, MAX_PACKET_CHUNKS, SEND_PIECE)
#undef SEND_PIECE
    return TC_ACT_OK;
}

int tc_ingress(struct __sk_buff *skb) { return capture(skb, 0); }
int tc_egress(struct __sk_buff *skb) { return capture(skb, 1); }

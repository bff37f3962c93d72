/* Kernel-to-user structs of the packet program (the pcap model of the TLS modules).
 * Declared again in ecapture/structs/packets.py. */
#ifndef ECAPTURE_PACKETS_H
#define ECAPTURE_PACKETS_H

#include "ecapture.h"

#ifndef PACKET_CHUNK_SIZE
#define PACKET_CHUNK_SIZE 16384
#endif

enum packet_event_kind {
    PACKET_EVENT_WHOLE = 4, /* packet_event_t: how packets were recorded before chunking */
    PACKET_EVENT_CHUNK = 6, /* packet_chunk_event_t */
};

/* A packet as recordings made before chunking hold it: its first caplen bytes followed
 * this header (at most 64 KiB, a perf sample's limit). No longer sent; kept so that those
 * recordings still decode. */
struct packet_event_t {
    __u32 kind;         /* PACKET_EVENT_WHOLE */
    __u32 ifindex;
    __u64 timestamp_ns;
    __u32 len;          /* skb->len */
    __u32 caplen;       /* bytes that follow */
    __u32 direction;    /* 0 ingress, 1 egress */
    __u32 reserved;
};

/* One piece of one packet seen by the TC program. A packet longer than PACKET_CHUNK_SIZE
 * (GSO packets on loopback exceed 64 KiB) is sent as several pieces with increasing
 * `offset`, all with the packet's timestamp; user space joins them. */
struct packet_chunk_event_t {
    __u32 kind;         /* PACKET_EVENT_CHUNK */
    __u32 ifindex;
    __u64 timestamp_ns; /* bpf_ktime_get_ns() when the program saw the packet */
    __u32 len;          /* skb->len: the whole packet */
    __u32 offset;       /* where this piece starts */
    __u32 data_len;     /* bytes of data[] that are valid and sent; 0: could not be read */
    __u8 direction;     /* 0 ingress, 1 egress */
    __u8 reserved[3];
    __u8 data[PACKET_CHUNK_SIZE];
};

#endif

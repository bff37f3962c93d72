"""Event structs of the packet program (the pcap model), mirroring kern/packets.h.

C declarations (kern/packets.h)::

    struct packet_event_t {            // recordings made before packets were chunked
        __u32 kind; __u32 ifindex; __u64 timestamp_ns;
        __u32 len; __u32 caplen; __u32 direction; __u32 reserved;
    };  // followed by caplen packet bytes

    struct packet_chunk_event_t {
        __u32 kind; __u32 ifindex; __u64 timestamp_ns;
        __u32 len; __u32 offset; __u32 data_len;
        __u8 direction; __u8 reserved[3];
        __u8 data[PACKET_CHUNK_SIZE];   // only data_len bytes are sent
    };
"""

import construct as cs

from ecapture.structs.layout import KernelStruct

HEADER = "packets.h"
EVENT_PACKET = 4
EVENT_PACKET_CHUNK = 6
PACKET_CHUNK_SIZE = 16384

# The packet's caplen bytes follow this header in the sample (not part of the C struct).
packet_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "ifindex" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "len" / cs.Int32ul,
    "caplen" / cs.Int32ul,
    "direction" / cs.Int32ul,
    "reserved" / cs.Int32ul,
)

packet_chunk_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "ifindex" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "len" / cs.Int32ul,
    "offset" / cs.Int32ul,
    "data_len" / cs.Int32ul,
    "direction" / cs.Int8ul,
    "reserved" / cs.Bytes(3),
    "data" / cs.Bytes(cs.this.data_len),
)

PACKET = KernelStruct("packet_event_t", HEADER, packet_event_t, "PACKET_EVENT_WHOLE")
PACKET_CHUNK = KernelStruct("packet_chunk_event_t", HEADER, packet_chunk_event_t,
                            "PACKET_EVENT_CHUNK")
STRUCTS = {s.name: s for s in (PACKET, PACKET_CHUNK)}

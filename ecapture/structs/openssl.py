"""Event structs of the OpenSSL module, mirroring kern/openssl.h field for field.

C declarations (kern/openssl.h)::

    struct ssl_data_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 start_ns; __u64 ssl;
        __u32 tid; __u32 uid; __s32 fd; __s32 version;
        __u32 total_len; __u32 offset; __u32 data_len;
        __u8 direction; __u8 func; __u16 reserved;
        char comm[16];
        __u8 data[SSL_CHUNK_SIZE];   // only data_len bytes are sent
    };

    struct conn_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 sock;
        __u32 tid; __u32 uid; __s32 fd;
        __u16 family; __u8 conn; __u8 reserved;
        __u16 lport; __u16 rport;
        __u8 laddr[16]; __u8 raddr[16];
        char comm[16];
        __u32 reserved2;
    };

    struct master_secret_event_t {
        __u32 kind; __u32 pid; __u64 timestamp_ns; __u64 ssl;
        __s32 version; __u32 cipher_id;
        __u8 client_random[32]; __u8 master_key[48];
        __u8 handshake_secret[64]; __u8 handshake_traffic_hash[64];
        __u8 client_app_traffic_secret[64]; __u8 server_app_traffic_secret[64];
        __u8 exporter_master_secret[64];
        char comm[16];
    };

    struct packet_event_t {
        __u32 kind; __u32 ifindex; __u64 timestamp_ns;
        __u32 len; __u32 caplen; __u32 direction; __u32 reserved;
    };  // followed by caplen packet bytes
"""

import construct as cs

EVENT_SSL_DATA = 1
EVENT_CONN = 2
EVENT_MASTER_SECRET = 3
EVENT_PACKET = 4
SSL_CHUNK_SIZE = 16384

ssl_data_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "start_ns" / cs.Int64ul,
    "ssl" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "fd" / cs.Int32sl,
    "version" / cs.Int32sl,
    "total_len" / cs.Int32ul,
    "offset" / cs.Int32ul,
    "data_len" / cs.Int32ul,
    "direction" / cs.Int8ul,
    "func" / cs.Int8ul,
    "reserved" / cs.Int16ul,
    "comm" / cs.Bytes(16),
    "data" / cs.Bytes(cs.this.data_len),
)

conn_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "sock" / cs.Int64ul,
    "tid" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "fd" / cs.Int32sl,
    "family" / cs.Int16ul,
    "conn" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "lport" / cs.Int16ul,
    "rport" / cs.Int16ul,
    "laddr" / cs.Bytes(16),
    "raddr" / cs.Bytes(16),
    "comm" / cs.Bytes(16),
    "reserved2" / cs.Int32ul,
)

master_secret_event_t = cs.Struct(
    "kind" / cs.Int32ul,
    "pid" / cs.Int32ul,
    "timestamp_ns" / cs.Int64ul,
    "ssl" / cs.Int64ul,
    "version" / cs.Int32sl,
    "cipher_id" / cs.Int32ul,
    "client_random" / cs.Bytes(32),
    "master_key" / cs.Bytes(48),
    "handshake_secret" / cs.Bytes(64),
    "handshake_traffic_hash" / cs.Bytes(64),
    "client_app_traffic_secret" / cs.Bytes(64),
    "server_app_traffic_secret" / cs.Bytes(64),
    "exporter_master_secret" / cs.Bytes(64),
    "comm" / cs.Bytes(16),
)

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

# name -> declaration, for layout tests, fingerprints and strategies
STRUCTS = {"ssl_data_event_t": ssl_data_event_t, "conn_event_t": conn_event_t,
           "master_secret_event_t": master_secret_event_t, "packet_event_t": packet_event_t}

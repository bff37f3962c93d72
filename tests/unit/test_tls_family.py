"""The TLS family's user side, through the OpenSSL module: chunk joining, connections by
fd, packets in pieces, 4-tuples from /proc as facts, and decoder robustness."""

from __future__ import annotations

import construct as cs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ecapture.assemble import TlsChunk
from ecapture.errors import DecodeError
from ecapture.events import Conn, Event, KeyLogEntry, Packet, TlsData
from ecapture.modules.openssl import OpenSSLModule
from ecapture.procnet import SocketTuple
from ecapture.structs.openssl import EVENT_MASTER_SECRET, master_secret_event_t
from ecapture.structs.packets import (
    EVENT_PACKET,
    EVENT_PACKET_CHUNK,
    PACKET_CHUNK_SIZE,
    packet_chunk_event_t,
    packet_event_t,
)
from ecapture.structs.tls import EVENT_CONN, EVENT_SSL_DATA, TLS_CHUNK_SIZE, conn_event_t
from ecapture.structs.tls import ssl_data_event_t as data_t
from ecapture.testing.factories import make_event


def chunk(payload: bytes, offset: int, total: int, **over: object) -> bytes:
    values = {
        "kind": EVENT_SSL_DATA, "pid": 100, "timestamp_ns": 5_000 + offset, "start_ns": 4_000,
        "ssl": 0xABC, "tid": 101, "uid": 1000, "fd": 7, "version": 0x0304,
        "total_len": total, "offset": offset, "direction": 1, "func": 3,
        "comm": b"python3", "data": payload,
    }
    values.update(over)
    return make_event(data_t, **values)


def conn(kind: int = 0, fd: int = 7, pid: int = 100, sock: int = 0xFFFF1, ts: int = 1_000,
         family: int = 2) -> bytes:
    addrs = {"laddr": bytes([127, 0, 0, 1]), "raddr": bytes([127, 0, 0, 2])} if family else {}
    return make_event(conn_event_t, kind=EVENT_CONN, pid=pid, timestamp_ns=ts, sock=sock,
                      tid=pid, uid=1000, fd=fd, family=family, conn=kind,
                      lport=40000 if family else 0, rport=443 if family else 0,
                      comm=b"curl", **addrs)


def run(raws: list[bytes], module: OpenSSLModule | None = None) -> list[Event]:
    module = module or OpenSSLModule({})
    out: list[Event] = []
    for raw in raws:
        out.extend(module.dispatch(module.decode("events", raw)))
    out.extend(module.finish())
    return out


def test_decode_fields() -> None:
    piece = OpenSSLModule({}).decode("events", chunk(b"hello", 0, 10))  # half a call
    assert piece == TlsChunk(5_000, 100, 101, 1000, "python3", 7, 0x0304, "write",
                             "SSL_write_ex", 0xABC, 10, 4_000, 0, b"hello")
    # A whole call in one chunk decodes straight to its event; dispatch adds the connection.
    whole = OpenSSLModule({}).decode("events", chunk(b"hello", 0, 5))
    assert whole == TlsData(5_000, 100, 101, 1000, "python3", 7, 0x0304, "write",
                            "SSL_write_ex", 0xABC, b"hello", 5)
    (ev,) = run([chunk(b"hello", 0, 5)])
    assert ev == TlsData(5_000, 100, 101, 1000, "python3", 7, 0x0304, "write", "SSL_write_ex",
                         0xABC, b"hello", 5)
    assert isinstance(ev, TlsData) and ev.version_name == "TLSv1.3"


def test_large_call_is_joined_whole() -> None:
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    raws = [chunk(payload[o:o + TLS_CHUNK_SIZE], o, len(payload))
            for o in range(0, len(payload), TLS_CHUNK_SIZE)]
    (call,) = run(raws)
    assert isinstance(call, TlsData)
    assert call.data == payload and call.missing == 0
    assert call.timestamp_ns == 5_000 + (len(raws) - 1) * TLS_CHUNK_SIZE  # the last chunk's


def test_lost_middle_chunk_is_reported_not_hidden() -> None:
    payload = b"x" * (3 * TLS_CHUNK_SIZE)
    raws = [chunk(payload[o:o + TLS_CHUNK_SIZE], o, len(payload))
            for o in range(0, len(payload), TLS_CHUNK_SIZE)]
    del raws[1]
    calls = [c for c in run(raws) if isinstance(c, TlsData)]
    assert [len(c.data) for c in calls] == [TLS_CHUNK_SIZE, TLS_CHUNK_SIZE]
    assert all(c.missing for c in calls)


@pytest.mark.parametrize("failed_at", [0, 2])
def test_unreadable_chunk_marker_reports_the_rest_missing(failed_at: int) -> None:
    # kern/tls.c sends an empty chunk where bpf_probe_read_user failed, then stops.
    total = 4 * TLS_CHUNK_SIZE
    raws = [chunk(b"y" * TLS_CHUNK_SIZE, i * TLS_CHUNK_SIZE, total) for i in range(failed_at)]
    raws.append(chunk(b"", failed_at * TLS_CHUNK_SIZE, total))
    module = OpenSSLModule({})
    (call,) = run(raws, module)
    assert isinstance(call, TlsData)
    assert (len(call.data), call.missing) == (failed_at * TLS_CHUNK_SIZE,
                                              total - failed_at * TLS_CHUNK_SIZE)
    # ... and the summary at exit counts it, as it counts lost events.
    assert module.summary() == [f"tls: 1 call short by {call.missing:,} bytes (lost, or the "
                                "kernel would not copy them)"]


def test_whole_calls_add_nothing_to_the_summary() -> None:
    module = OpenSSLModule({})
    run([chunk(b"z" * 10, 0, 10), chunk(b"w" * 20, 0, 20)], module)
    assert module.summary() == []


def test_next_call_releases_an_incomplete_one() -> None:
    first = chunk(b"a" * 10, 0, 20)  # its second half never comes
    second = chunk(b"b" * 5, 0, 5, start_ns=9_000)
    calls = [c for c in run([first, second]) if isinstance(c, TlsData)]
    assert [(c.data, c.missing) for c in calls] == [(b"a" * 10, 10), (b"b" * 5, 0)]


def test_conn_attached_by_pid_and_fd_and_dropped_on_close() -> None:
    out = run([conn(), chunk(b"GET /", 0, 5), conn(kind=2), chunk(b"again", 0, 5, start_ns=1)])
    assert [type(o).__name__ for o in out] == ["Conn", "TlsData", "Conn", "TlsData"]
    with_conn, after_close = out[1], out[3]
    assert isinstance(with_conn, TlsData) and isinstance(with_conn.conn, Conn)
    assert (with_conn.conn.local, with_conn.conn.remote) == ("127.0.0.1:40000", "127.0.0.2:443")
    assert isinstance(after_close, TlsData) and after_close.conn is None


def test_last_read_arriving_after_its_close_keeps_the_connection() -> None:
    # Perf buffers: the thread read (t=5000 on one CPU) and then closed (t=6000 on another);
    # the close's buffer happened to be polled first.
    out = run([conn(), conn(kind=2, ts=6_000), chunk(b"last", 0, 4),
               chunk(b"late", 0, 4, start_ns=7_000, timestamp_ns=7_000)])
    data = [o for o in out if isinstance(o, TlsData)]
    assert data[0].conn is not None and data[0].conn.kind == "connect"
    assert data[1].conn is None  # after the close: not that connection any more


def test_reused_fd_is_a_new_connection() -> None:
    out = run([conn(sock=1), conn(sock=2, kind=1), chunk(b"x", 0, 1)])
    data = out[-1]
    assert isinstance(data, TlsData) and data.conn is not None
    assert (data.conn.sock, data.conn.kind) == (2, "accept")


def test_recordings_of_format_1_keep_their_proc_connections() -> None:
    # Format 1 recorded /proc lookups as forged conn_event_t with conn=3.
    (proc,) = run([conn(kind=3, sock=0)])
    assert isinstance(proc, Conn) and proc.kind == "proc"
    assert proc.text_line().endswith("SOCKET  127.0.0.1:40000 -> 127.0.0.2:443 (from /proc)")


@given(cut=st.integers(0, 200), junk=st.binary(max_size=64))
@example(cut=3, junk=b"")
@example(cut=90, junk=b"\xff" * 8)
def test_decoder_accepts_or_raises_decode_error(cut: int, junk: bytes) -> None:
    module = OpenSSLModule({})
    for raw in (chunk(b"payload" * 10, 0, 70), conn()):
        try:
            module.decode("events", raw[:cut] + junk)
        except DecodeError:
            pass
        except cs.ConstructError as e:  # pragma: no cover - the failure we guard against
            pytest.fail(f"construct error escaped: {e}")


# -- 4-tuples from /proc, recorded as facts -------------------------------------------------

FOUND = SocketTuple(2, bytes([10, 0, 0, 1]) + bytes(12), 8443,
                    bytes([10, 0, 0, 2]) + bytes(12), 51000)


def lookups() -> tuple[list[tuple[int, int]], object]:
    looked: list[tuple[int, int]] = []

    def lookup(pid: int, fd: int) -> SocketTuple:
        looked.append((pid, fd))
        return FOUND

    return looked, lookup


def test_accept_without_addresses_gets_them_from_a_fact() -> None:
    looked, lookup = lookups()
    live = OpenSSLModule({})
    bare_accept = conn(kind=1, fd=9, family=0)
    place, obs = live.observe(bare_accept, lookup)  # type: ignore[arg-type]
    assert place[0] == "process" and place[1]["pid"] == 100
    assert looked == [(100, 9)]
    # Replay: the fact comes first, the kernel's event unchanged after it.
    replay = OpenSSLModule({})
    assert list(replay.apply(*obs)) == []
    (ev,) = replay.dispatch(replay.decode("events", bare_accept))
    assert isinstance(ev, Conn) and ev.kind == "accept"
    assert (ev.local, ev.remote) == ("10.0.0.1:8443", "10.0.0.2:51000")


def test_data_on_an_unknown_connection_is_preceded_by_a_socket_fact_once() -> None:
    looked, lookup = lookups()
    live = OpenSSLModule({})
    data = chunk(b"x", 0, 1, fd=7)
    place, obs = live.observe(data, lookup)  # type: ignore[arg-type]
    assert place[0] == "process"  # where pid 100 runs: once, before its first event
    assert live.observe(chunk(b"y", 0, 1, fd=7, start_ns=5), lookup) == []  # type: ignore[arg-type]
    replay = OpenSSLModule({})
    (proc,) = replay.apply(*obs)
    assert isinstance(proc, Conn) and proc.kind == "proc" and proc.fd == 7
    assert proc.timestamp_ns == 5_000 and proc.comm == "python3"
    (call,) = replay.dispatch(replay.decode("events", data))
    assert isinstance(call, TlsData) and call.conn == proc
    # Known connections are not looked up.
    assert live.observe(conn(fd=3), lookup) == []  # type: ignore[arg-type]
    assert live.observe(chunk(b"z", 0, 1, fd=3), lookup) == []  # type: ignore[arg-type]
    assert looked == [(100, 7)]


def test_bad_fact_fields_are_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        list(OpenSSLModule({}).apply("socket", {"pid": 1}))


# -- secrets and packets -----------------------------------------------------------------

def test_master_secret_becomes_key_log_entries() -> None:
    raw = make_event(master_secret_event_t, kind=EVENT_MASTER_SECRET, pid=5, comm=b"curl",
                     version=0x0303, client_random=bytes(range(32)), master_key=b"\x11" * 48)
    (entry,) = run([raw])
    assert isinstance(entry, KeyLogEntry) and entry.pid == 5
    assert entry.line == f"CLIENT_RANDOM {bytes(range(32)).hex()} {'11' * 48}"


def packet_piece(data: bytes, offset: int, length: int, ts: int = 9) -> bytes:
    return make_event(packet_chunk_event_t, kind=EVENT_PACKET_CHUNK, ifindex=1,
                      timestamp_ns=ts, len=length, offset=offset, direction=1, data=data)


def test_a_large_packet_in_pieces_is_one_packet() -> None:
    module = OpenSSLModule({})
    frame = bytes(range(256)) * 300  # 76,800 bytes: a loopback GSO packet
    pieces = [packet_piece(frame[o:o + PACKET_CHUNK_SIZE], o, len(frame))
              for o in range(0, len(frame), PACKET_CHUNK_SIZE)]
    out = [e for raw in pieces for e in module.dispatch(module.decode("packets", raw))]
    (packet,) = out
    assert isinstance(packet, Packet) and packet.data == frame and packet.length == len(frame)
    assert packet.direction == "egress"


def test_legacy_whole_packets_still_decode() -> None:
    header = make_event(packet_event_t, kind=EVENT_PACKET, ifindex=1, timestamp_ns=3,
                        len=60, caplen=60, direction=0)
    module = OpenSSLModule({})
    (packet,) = module.dispatch(module.decode("packets", header + b"\xab" * 60))
    assert isinstance(packet, Packet) and packet.data == b"\xab" * 60


def test_peeked_offsets_are_the_structs() -> None:
    """The drain thread peeks at a few fields of raw events without decoding them: their
    offsets must be the declared structs' (which test_struct_layout checks against C)."""
    from ecapture.modules import tlsfamily
    from ecapture.structs.layout import layout
    from ecapture.structs.tls import CONN

    comm = next(f for f in layout(CONN.decl) if f.name == "comm")
    assert (tlsfamily._CONN_COMM.start, tlsfamily._CONN_COMM.stop) == (
        comm.offset, comm.offset + comm.size)

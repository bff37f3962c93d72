"""OpenSSL module events: struct round trips, the fast decoder against construct, chunk
joining, connection lookup, and decoder robustness against garbage."""

from __future__ import annotations

import construct as cs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ecapture.assemble import SslChunk
from ecapture.errors import DecodeError
from ecapture.events import Conn, SslData
from ecapture.modules.openssl import OpenSSLModule
from ecapture.structs.layout import header_codec
from ecapture.structs.openssl import (
    EVENT_CONN,
    EVENT_SSL_DATA,
    SSL_CHUNK_SIZE,
    STRUCTS,
    conn_event_t,
    ssl_data_event_t,
)
from ecapture.testing.strategies import struct_values


@pytest.mark.parametrize("name", sorted(STRUCTS))
@given(data=st.data())
def test_struct_round_trip(name: str, data: st.DataObject) -> None:
    decl = STRUCTS[name]
    values = data.draw(struct_values(decl))
    raw = decl.build(values)
    parsed = decl.parse(raw)
    for key, value in values.items():
        if key in parsed:
            assert parsed[key] == value
    assert decl.build(parsed) == raw
    # The hot-path codec is derived from the declaration and must agree with it.
    codec = header_codec(decl)
    fast = dict(zip(codec.names, codec.codec.unpack_from(raw), strict=True))
    for key in codec.names:
        assert fast[key] == parsed[key]


def chunk(payload: bytes, offset: int, total: int, **over: object) -> bytes:
    values = {
        "kind": EVENT_SSL_DATA, "pid": 100, "timestamp_ns": 5_000 + offset, "start_ns": 4_000,
        "ssl": 0xABC, "tid": 101, "uid": 1000, "fd": 7, "version": 0x0304,
        "total_len": total, "offset": offset, "data_len": len(payload), "direction": 1,
        "func": 3, "reserved": 0, "comm": b"python3".ljust(16, b"\0"), "data": payload,
    }
    values.update(over)
    return ssl_data_event_t.build(values)


def conn(kind: int = 0, fd: int = 7, pid: int = 100, sock: int = 0xFFFF1,
         ts: int = 1_000) -> bytes:
    return conn_event_t.build({
        "kind": EVENT_CONN, "pid": pid, "timestamp_ns": ts, "sock": sock, "tid": pid,
        "uid": 1000, "fd": fd, "family": 2, "conn": kind, "reserved": 0, "lport": 40000,
        "rport": 443, "laddr": bytes([127, 0, 0, 1]) + bytes(12),
        "raddr": bytes([127, 0, 0, 2]) + bytes(12), "comm": b"curl".ljust(16, b"\0"),
        "reserved2": 0,
    })


def run(raws: list[bytes]) -> list[object]:
    module = OpenSSLModule({})
    out: list[object] = []
    for raw in raws:
        out.extend(module.dispatch(module.decode("events", raw)))
    out.extend(module.finish())
    return out


def test_decode_fields() -> None:
    piece = OpenSSLModule({}).decode("events", chunk(b"hello", 0, 5))
    assert isinstance(piece, SslChunk)
    ev = piece.call
    assert (piece.start_ns, piece.offset) == (4_000, 0)
    assert ev == SslData(timestamp_ns=5_000, pid=100, tid=101, uid=1000, comm="python3", fd=7,
                         version=0x0304, direction="write", func="SSL_write_ex", ssl=0xABC,
                         data=b"hello", total_len=5)
    assert ev.version_name == "TLSv1.3"


def test_large_call_is_joined_whole() -> None:
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    raws = [chunk(payload[o:o + SSL_CHUNK_SIZE], o, len(payload))
            for o in range(0, len(payload), SSL_CHUNK_SIZE)]
    (call,) = run(raws)
    assert isinstance(call, SslData)
    assert call.data == payload
    assert call.missing == 0


def test_lost_middle_chunk_is_reported_not_hidden() -> None:
    payload = b"x" * (3 * SSL_CHUNK_SIZE)
    raws = [chunk(payload[o:o + SSL_CHUNK_SIZE], o, len(payload))
            for o in range(0, len(payload), SSL_CHUNK_SIZE)]
    del raws[1]
    calls = run(raws)
    assert [len(c.data) for c in calls] == [SSL_CHUNK_SIZE, SSL_CHUNK_SIZE]  # type: ignore[attr-defined]
    assert all(c.missing for c in calls)  # type: ignore[attr-defined]


@pytest.mark.parametrize("failed_at", [0, 2])
def test_unreadable_chunk_marker_reports_the_rest_missing(failed_at: int) -> None:
    # kern/openssl.c sends an empty chunk where bpf_probe_read_user failed, then stops.
    total = 4 * SSL_CHUNK_SIZE
    raws = [chunk(b"y" * SSL_CHUNK_SIZE, i * SSL_CHUNK_SIZE, total) for i in range(failed_at)]
    raws.append(chunk(b"", failed_at * SSL_CHUNK_SIZE, total))
    (call,) = run(raws)
    assert isinstance(call, SslData)
    assert (len(call.data), call.missing) == (failed_at * SSL_CHUNK_SIZE,
                                              total - failed_at * SSL_CHUNK_SIZE)


def test_next_call_releases_an_incomplete_one() -> None:
    first = chunk(b"a" * 10, 0, 20)  # its second half never comes
    second = chunk(b"b" * 5, 0, 5, start_ns=9_000)
    calls = run([first, second])
    assert [(c.data, c.missing) for c in calls] == [(b"a" * 10, 10), (b"b" * 5, 0)]  # type: ignore[attr-defined]


def test_conn_attached_by_pid_and_fd_and_dropped_on_close() -> None:
    out = run([conn(), chunk(b"GET /", 0, 5), conn(kind=2), chunk(b"again", 0, 5, start_ns=1)])
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["Conn", "SslData", "Conn", "SslData"]
    with_conn, after_close = out[1], out[3]
    assert isinstance(with_conn, SslData) and isinstance(with_conn.conn, Conn)
    assert (with_conn.conn.local, with_conn.conn.remote) == ("127.0.0.1:40000", "127.0.0.2:443")
    assert isinstance(after_close, SslData) and after_close.conn is None


def test_last_read_arriving_after_its_close_keeps_the_connection() -> None:
    # Perf buffers: the thread read (t=5000 on one CPU) and then closed (t=6000 on another);
    # the close's buffer happened to be polled first.
    out = run([conn(), conn(kind=2, ts=6_000), chunk(b"last", 0, 4),
               chunk(b"late", 0, 4, start_ns=7_000, timestamp_ns=7_000)])
    data = [o for o in out if isinstance(o, SslData)]
    assert data[0].conn is not None and data[0].conn.kind == "connect"
    assert data[1].conn is None  # after the close: not that connection any more


def test_reused_fd_is_a_new_connection() -> None:
    out = run([conn(sock=1), conn(sock=2, kind=1), chunk(b"x", 0, 1)])
    data = out[-1]
    assert isinstance(data, SslData) and data.conn is not None
    assert (data.conn.sock, data.conn.kind) == (2, "accept")


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


def test_backfill_fills_tuples_from_lookup() -> None:
    from ecapture.procnet import SocketTuple

    found = SocketTuple(2, bytes([10, 0, 0, 1]) + bytes(12), 8443,
                        bytes([10, 0, 0, 2]) + bytes(12), 51000)
    looked: list[tuple[int, int]] = []

    def lookup(pid: int, fd: int) -> SocketTuple:
        looked.append((pid, fd))
        return found

    module = OpenSSLModule({})
    # accept(fd, NULL, NULL): no addresses from the kernel -> filled in, same event.
    bare_accept = conn_event_t.build({**conn_event_t.parse(conn(kind=1, fd=9)), "family": 0,
                                      "lport": 0, "rport": 0, "laddr": bytes(16),
                                      "raddr": bytes(16)})
    (filled,) = module.backfill(bare_accept, lookup)
    ev = OpenSSLModule({}).decode("events", filled)
    assert isinstance(ev, Conn) and ev.kind == "accept"
    assert (ev.local, ev.remote) == ("10.0.0.1:8443", "10.0.0.2:51000")
    # Data on a connection no tracepoint saw: a CONN_PROC goes ahead of it, once.
    data = chunk(b"x", 0, 1, fd=7)
    proc, same = module.backfill(data, lookup)
    assert same is data
    pev = OpenSSLModule({}).decode("events", proc)
    assert isinstance(pev, Conn) and pev.kind == "proc" and pev.fd == 7
    assert module.backfill(chunk(b"y", 0, 1, fd=7, start_ns=5), lookup)[0][:4] != proc[:4]
    assert looked == [(100, 9), (100, 7)]
    # Known connections are not looked up.
    assert module.backfill(conn(fd=3), lookup) == [conn(fd=3)]
    assert module.backfill(chunk(b"z", 0, 1, fd=3), lookup) == [chunk(b"z", 0, 1, fd=3)]
    assert looked == [(100, 9), (100, 7)]

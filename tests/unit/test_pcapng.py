"""The pcapng writer: blocks read back with a minimal reader here, then checked by
capinfos/tshark when they are installed."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecapture.outputs.pcapng import PcapngWriter

REQUIRE_LIVE = os.environ.get("ECAPTURE_REQUIRE_LIVE") == "1"

KEYLOG = [
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET " + "11" * 32 + " " + "aa" * 32,
    "SERVER_HANDSHAKE_TRAFFIC_SECRET " + "11" * 32 + " " + "bb" * 32,
]

# (timestamp ns since the epoch, source port, payload): sub-microsecond digits on purpose.
PACKETS = [
    (1_700_000_000_123_456_789, 40000, b"GET / HTTP/1.1\r\n\r\n"),
    (1_700_000_001_000_000_001, 443, b"x"),
    (1_700_000_002_999_999_999, 40001, b""),
]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_tcp_frame(sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb" + b"\x08\x00"
    return eth + ip + tcp


# --- a minimal reader -----------------------------------------------------------------------

@dataclass
class Block:
    type: int
    body: bytes


def read_blocks(data: bytes) -> list[Block]:
    blocks = []
    off = 0
    while off < len(data):
        btype, total = struct.unpack_from("<II", data, off)
        assert total % 4 == 0 and total >= 12, f"bad block length {total} at {off}"
        (trailer,) = struct.unpack_from("<I", data, off + total - 4)
        assert trailer == total, "trailing total length differs"
        blocks.append(Block(btype, data[off + 8:off + total - 4]))
        off += total
    assert off == len(data)
    return blocks


def read_options(data: bytes) -> dict[int, bytes]:
    opts = {}
    off = 0
    while off < len(data):
        code, length = struct.unpack_from("<HH", data, off)
        if code == 0:
            assert length == 0 and off + 4 == len(data), "opt_endofopt must end the options"
            return opts
        opts[code] = data[off + 4:off + 4 + length]
        off += 4 + length + (-length % 4)
    raise AssertionError("options without opt_endofopt")


def write_sample() -> bytes:
    buf = io.BytesIO()
    w = PcapngWriter(buf, [("lo", 1)])
    w.add_secrets(KEYLOG)
    for ts, sport, payload in PACKETS:
        w.add_packet(0, ts, ipv4_tcp_frame(sport, 443 if sport != 443 else 40000, payload))
    w.flush()
    return buf.getvalue()


# --- the tests ------------------------------------------------------------------------------

def test_blocks_round_trip() -> None:
    blocks = read_blocks(write_sample())
    assert [b.type for b in blocks] == [0x0A0D0D0A, 1, 0x0A, 6, 6, 6]

    magic, major, minor, section_len = struct.unpack_from("<IHHq", blocks[0].body)
    assert (magic, major, minor, section_len) == (0x1A2B3C4D, 1, 0, -1)

    linktype, reserved, snaplen = struct.unpack_from("<HHI", blocks[1].body)
    assert (linktype, reserved, snaplen) == (1, 0, 0)
    opts = read_options(blocks[1].body[8:])
    assert opts == {2: b"lo", 9: bytes([9])}

    stype, slen = struct.unpack_from("<II", blocks[2].body)
    assert stype == 0x544C534B
    text = blocks[2].body[8:8 + slen]
    assert text.decode() == "".join(line + "\n" for line in KEYLOG)
    assert len(blocks[2].body) == 8 + slen + (-slen % 4)
    assert blocks[2].body[8 + slen:] == b"\x00" * (-slen % 4)

    for block, (ts, sport, payload) in zip(blocks[3:], PACKETS, strict=True):
        iface, hi, lo, caplen, origlen = struct.unpack_from("<IIIII", block.body)
        assert iface == 0
        assert (hi << 32) | lo == ts
        frame = ipv4_tcp_frame(sport, 443 if sport != 443 else 40000, payload)
        assert caplen == origlen == len(frame)
        assert block.body[20:20 + caplen] == frame
        assert block.body[20 + caplen:] == b"\x00" * (-caplen % 4)


def test_secrets_are_deduplicated() -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf, [("lo", 1)])
    w.add_secrets(KEYLOG[:1])
    w.add_secrets(KEYLOG + [KEYLOG[1] + "\n"])
    w.add_secrets(KEYLOG)  # nothing new: no block
    dsbs = [b for b in read_blocks(buf.getvalue()) if b.type == 0x0A]
    texts = [b.body[8:8 + struct.unpack_from("<I", b.body, 4)[0]].decode() for b in dsbs]
    assert texts == [KEYLOG[0] + "\n", KEYLOG[1] + "\n"]


def test_original_length_and_bad_arguments() -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf, [("eth0", 1), ("lo", 1)])
    w.add_packet(1, 5, b"abcde", original_len=1500)
    epb = read_blocks(buf.getvalue())[-1]
    assert struct.unpack_from("<IIIII", epb.body) == (1, 0, 5, 5, 1500)
    with pytest.raises(ValueError, match="interface"):
        w.add_packet(2, 0, b"")
    with pytest.raises(ValueError, match="original length"):
        w.add_packet(0, 0, b"abc", original_len=2)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=70)), max_size=5))
def test_any_packets_round_trip(packets: list[tuple[int, bytes]]) -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf, [("any", 113)])
    for ts, data in packets:
        w.add_packet(0, ts, data)
    epbs = read_blocks(buf.getvalue())[2:]
    got = []
    for b in epbs:
        _, hi, lo, caplen, _ = struct.unpack_from("<IIIII", b.body)
        got.append(((hi << 32) | lo, b.body[20:20 + caplen]))
    assert got == packets


def _need_tools() -> None:
    missing = [t for t in ("capinfos", "tshark") if shutil.which(t) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install tshark)"
        if REQUIRE_LIVE:
            pytest.fail(f"ECAPTURE_REQUIRE_LIVE=1 but {reason}")
        pytest.skip(reason)


def test_wireshark_reads_it(tmp_path: Path) -> None:
    _need_tools()
    path = tmp_path / "sample.pcapng"
    path.write_bytes(write_sample())
    env = {**os.environ, "HOME": str(tmp_path)}  # keep tshark's profile writes out of $HOME

    info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, env=env,
                          check=False)
    assert info.returncode == 0, info.stderr
    counts = [line for line in info.stdout.splitlines() if "Number of packets" in line]
    assert counts and counts[0].split(":", 1)[1].strip() == str(len(PACKETS))

    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields",
                          "-e", "frame.time_epoch", "-e", "tcp.srcport"],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.strip()]
    assert len(rows) == len(PACKETS)
    for (epoch, sport), (ts, want_sport, _) in zip(rows, PACKETS, strict=True):
        assert Decimal(epoch) * 1_000_000_000 == ts
        assert int(sport) == want_sport


def test_pcap_model_orders_packets_and_puts_secrets_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Secrets read after a handshake must still precede its packets; packets delivered
    out of order by per-CPU buffers come out in timestamp order; tick() releases old ones."""
    from ecapture.events import Packet
    from ecapture.outputs.pcap import HOLD_NS, PcapOutput
    from ecapture.tlskeys import MasterSecret

    def packet(ts: int, sport: int, dport: int = 443) -> Packet:
        frame = ipv4_tcp_frame(sport, dport, b"x")
        return Packet(ts, 0, 0, 0, "", ifindex=1, direction="egress", length=len(frame),
                      data=frame)

    keys = MasterSecret(timestamp_ns=50, pid=1, comm="c", ssl=1, version=0x0303, cipher_id=0,
                        client_random=b"\x01" * 32, master_key=b"\x02" * 48,
                        handshake_secret=bytes(64), handshake_traffic_hash=bytes(64),
                        client_app_traffic_secret=bytes(64),
                        server_app_traffic_secret=bytes(64), exporter_master_secret=bytes(64))
    path = tmp_path / "out.pcapng"
    out = PcapOutput(str(path), clock_offset_ns=1_000, ifname="lo", filter_expr="port 443")
    for ev in (packet(30, 1003), packet(10, 1001), packet(20, 1002), *keys.entries()):
        out.write(ev)
    out.tick(20 + HOLD_NS)  # releases the packets at 10 and 20, not the one at 30
    assert out.packets == 2
    out.write(packet(40, 1004))
    out.write(packet(41, 1005, 80))  # filtered out: port 80
    out.close()
    blocks = read_blocks(path.read_bytes())
    kinds = [b.type for b in blocks]
    assert kinds[:2] == [0x0A0D0D0A, 0x00000001]  # section header, interface
    assert kinds[2] == 0x0000000A  # the secrets, ahead of every packet
    epbs = [b for b in blocks if b.type == 0x00000006]
    stamps = [int.from_bytes(b.body[4:8], "little") << 32 | int.from_bytes(b.body[8:12], "little")
              for b in epbs]
    assert stamps == [1_010, 1_020, 1_030, 1_040]  # wall clock, in order

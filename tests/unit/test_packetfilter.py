"""The tcpdump-like frame filter: expressions against hand-built frames."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecapture.errors import ConfigError
from ecapture.packetfilter import compile_filter

MACS = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb"


def _ip(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def ipv4(proto: int, src: str, dst: str, l4: bytes, frag: int = 0x4000) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0,
                       _ip(src), _ip(dst)) + l4


def ipv6(nh: int, src: str, dst: str, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, _ip(src), _ip(dst)) + l4


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"hi") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    if vlan is not None:
        return MACS + struct.pack("!HHH", 0x8100, vlan, ethertype) + payload
    return MACS + struct.pack("!H", ethertype) + payload


TCP4 = eth(0x0800, ipv4(6, "10.0.0.1", "192.168.1.2", tcp(40000, 443)))
UDP6 = eth(0x86DD, ipv6(17, "2001:db8::1", "fe80::2", udp(5353, 53)))
ICMP4 = eth(0x0800, ipv4(1, "10.0.0.1", "8.8.8.8", b"\x08\x00\x00\x00\x00\x01\x00\x01"))
ARP = eth(0x0806, bytes.fromhex("0001080006040001") + MACS[6:] + _ip("10.0.0.1")
          + b"\x00" * 6 + _ip("10.0.0.2"))
VLAN_TCP4 = eth(0x0800, ipv4(6, "172.16.5.4", "10.0.0.1", tcp(8080, 50000)), vlan=42)
FRAG_TCP4 = eth(0x0800, ipv4(6, "10.0.0.1", "192.168.1.2", tcp(40000, 443), frag=0x0010))
SHORT = TCP4[:20]

FRAMES = {"tcp4": TCP4, "udp6": UDP6, "icmp4": ICMP4, "arp": ARP, "vlan": VLAN_TCP4,
          "frag": FRAG_TCP4, "short": SHORT}

# expression -> names of the frames it accepts
CASES: list[tuple[str, set[str]]] = [
    ("", set(FRAMES)),
    ("tcp", {"tcp4", "vlan", "frag"}),
    ("udp", {"udp6"}),
    ("icmp", {"icmp4"}),
    ("ip", {"tcp4", "icmp4", "vlan", "frag"}),
    ("ip6", {"udp6"}),
    ("not ip and not ip6", {"arp", "short"}),
    ("host 10.0.0.1", {"tcp4", "icmp4", "vlan", "frag"}),
    ("src host 10.0.0.1", {"tcp4", "icmp4", "frag"}),
    ("dst host 10.0.0.1", {"vlan"}),
    ("src 10.0.0.1", {"tcp4", "icmp4", "frag"}),
    ("dst 10.0.0.1", {"vlan"}),
    ("host 2001:db8::1", {"udp6"}),
    ("dst fe80::2", {"udp6"}),
    ("port 443", {"tcp4"}),
    ("port 53", {"udp6"}),
    ("src port 5353", {"udp6"}),
    ("dst port 5353", set()),
    ("dst port 50000", {"vlan"}),
    ("net 10.0.0.0/8", {"tcp4", "icmp4", "vlan", "frag"}),
    ("net 192.168.0.0/16", {"tcp4", "frag"}),
    ("net 2001:db8::/32", {"udp6"}),
    ("net 10.0.0.1/32", {"tcp4", "icmp4", "vlan", "frag"}),
    ("tcp and port 443", {"tcp4"}),
    ("tcp && port 443 || udp", {"tcp4", "udp6"}),
    ("udp or tcp and port 8080", {"udp6", "vlan"}),
    ("(udp or tcp) and port 8080", {"vlan"}),
    ("not tcp", {"udp6", "icmp4", "arp", "short"}),
    ("!tcp", {"udp6", "icmp4", "arp", "short"}),
    ("! tcp and ! udp", {"icmp4", "arp", "short"}),
    ("not (tcp or udp)", {"icmp4", "arp", "short"}),
    ("not not tcp", {"tcp4", "vlan", "frag"}),
    ("not port 443", {"udp6", "icmp4", "arp", "vlan", "frag", "short"}),
    ("TCP AND Port 443", {"tcp4"}),
    ("((ip))", {"tcp4", "icmp4", "vlan", "frag"}),
]


@pytest.mark.parametrize(("expr", "accepted"), CASES)
def test_filter_table(expr: str, accepted: set[str]) -> None:
    match = compile_filter(expr)
    got = {name for name, frame in FRAMES.items() if match(frame)}
    assert got == accepted


def test_none_accepts_all() -> None:
    match = compile_filter(None)
    assert all(match(frame) for frame in FRAMES.values())
    assert match(b"")


@pytest.mark.parametrize(("expr", "message"), [
    ("tcp prot 80", "filter: unexpected 'prot' at position 5"),
    ("prot 80", "filter: unexpected 'prot' at position 1"),
    ("port", "filter: expected a port number after 'port', got end of expression"),
    ("port 70000", "filter: bad port '70000' at position 6"),
    ("port http", "filter: bad port 'http' at position 6"),
    ("host example.com", "filter: bad IP address 'example.com' at position 6"),
    ("host tcp", "filter: unexpected 'tcp' at position 6"),
    ("net 10.0.0.1/8", "filter: bad network '10.0.0.1/8' at position 5"),
    ("(tcp", "filter: expected ')' after 'tcp', got end of expression"),
    ("tcp)", "filter: unexpected ')' at position 4"),
    ("tcp and", "filter: expected a primitive after 'and', got end of expression"),
    ("and tcp", "filter: unexpected 'and' at position 1"),
    ("tcp port", "filter: "),  # "tcp udp" is valid (juxtaposition), a port needs a number
    ("src and tcp", "filter: unexpected 'and' at position 5"),
    ("tcp & udp", "filter: unexpected character '&' at position 5"),
    ("()", "filter: unexpected ')' at position 2"),
])
def test_bad_expressions(expr: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_filter(expr)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text


@pytest.mark.parametrize("expr", [
    "tcp", "not udp", "host 10.0.0.1 or host ::1", "port 443 and not icmp",
    "net 10.0.0.0/8 || ip6", "src port 1 or dst port 2",
])
@given(data=st.binary(max_size=80), prefix=st.sampled_from([b"", TCP4[:14], UDP6[:14],
                                                           VLAN_TCP4[:18]]))
def test_random_bytes_never_raise(expr: str, data: bytes, prefix: bytes) -> None:
    result = compile_filter(expr)(prefix + data)
    assert isinstance(result, bool)


def test_juxtaposition_means_and() -> None:
    """tcpdump reads 'tcp port 443' as 'tcp and port 443'."""
    both = compile_filter("tcp port 443")
    explicit = compile_filter("tcp and port 443")
    for frame in FRAMES.values():
        assert both(frame) == explicit(frame)
    assert not compile_filter("tcp udp")(FRAMES["tcp4"])
    assert compile_filter("tcp port 443")(FRAMES["tcp4"]) == compile_filter("port 443")(TCP4)

"""Packet filters: tcpdump compiles them, our classic BPF interpreter runs them.

The ground truth is tcpdump itself: a corpus of frames goes into a pcap file, ``tcpdump -r
in.pcap -w out.pcap EXPR`` keeps some of them, and ``run()`` must accept exactly those. The
same corpus and expressions drive the kernel test (tests/integration/
test_packetfilter_live.py), which loads this module by path.

Tests that need tcpdump use the ``tcpdump`` fixture: without the binary they fail saying
so (CI installs it), they never skip.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ecapture import packetfilter as pf
from ecapture.errors import ConfigError
from ecapture.packetfilter import Insn, run


@pytest.fixture(scope="session")
def tcpdump() -> str:
    path = pf.find_tcpdump()
    if path is None:
        pytest.fail("tcpdump is not installed; these tests compare against it "
                    "(apt-get install tcpdump)")
    return path


# --- frames ----------------------------------------------------------------------------------

class Frame(NamedTuple):
    name: str
    data: bytes  # the captured bytes
    wirelen: int  # the length on the wire (>= len(data))


MAC_A = bytes.fromhex("001122334455")
MAC_B = bytes.fromhex("66778899aabb")
BROADCAST = b"\xff" * 6


def _ip(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def eth(ethertype: int, payload: bytes, *, dst: bytes = MAC_B, src: bytes = MAC_A,
        tags: Sequence[tuple[int, int]] = ()) -> bytes:
    """Ethernet II; ``tags`` are (TPID, VLAN id) pairs, outermost first."""
    head = dst + src
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, src: str, dst: str, payload: bytes, *, frag: int = 0x4000, ttl: int = 64,
         options: bytes = b"", version: int = 4) -> bytes:
    ihl = 5 + len(options) // 4
    return struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, ihl * 4 + len(payload), 0x1234,
                       frag, ttl, proto, 0, _ip(src), _ip(dst)) + options + payload


def ipv6(nh: int, src: str, dst: str, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64, _ip(src),
                       _ip(dst)) + payload


def ext6(nh: int, body: bytes = b"\x00" * 6) -> bytes:
    """An IPv6 extension header (hop-by-hop, routing, destination options)."""
    assert (len(body) + 2) % 8 == 0
    return struct.pack("!BB", nh, (len(body) + 2) // 8 - 1) + body


def tcp(sport: int, dport: int, flags: int = 0x10, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, flags, 65535, 0,
                       0) + payload


def udp(sport: int, dport: int, payload: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int = 0) -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, 7, 1) + b"ping" * 4


def arp(op: int, spa: str, tpa: str) -> bytes:
    return (struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + MAC_A + _ip(spa) + b"\x00" * 6
            + _ip(tpa))


FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
IP4, IP6, ARP, VLAN, QINQ = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8


def _corpus() -> list[Frame]:
    rnd = random.Random(1)  # fixed: the same corpus for the unit and the kernel tests
    frames: list[tuple[str, bytes]] = [
        ("tcp4-syn", eth(IP4, ipv4(6, "10.0.0.1", "192.168.1.2", tcp(40000, 443, SYN)))),
        ("tcp4-synack", eth(IP4, ipv4(6, "192.168.1.2", "10.0.0.1",
                                      tcp(443, 40000, SYN | ACK)), dst=MAC_A, src=MAC_B)),
        ("tcp4-big", eth(IP4, ipv4(6, "10.0.0.1", "192.168.1.2",
                                   tcp(40000, 443, PSH | ACK, bytes(range(200)))))),
        ("tcp4-fin-80", eth(IP4, ipv4(6, "10.9.8.7", "172.16.0.1", tcp(51000, 80, FIN | ACK)))),
        ("tcp4-rst-opts", eth(IP4, ipv4(6, "172.16.5.4", "10.0.0.1", tcp(8080, 50000, RST),
                                        options=b"\x01\x01\x01\x00"))),
        ("tcp4-ihl15", eth(IP4, ipv4(6, "192.168.7.7", "192.168.7.8", tcp(2222, 22, SYN),
                                     options=bytes([1] * 39 + [0])))),
        ("tcp4-ecn", eth(IP4, ipv4(6, "10.0.0.3", "10.0.0.4",
                                   tcp(1, 65535, ECE | CWR | URG | SYN)))),
        ("tcp4-ports-0", eth(IP4, ipv4(6, "10.0.0.3", "10.0.0.4", tcp(0, 0, ACK)))),
        ("tcp4-lo", eth(IP4, ipv4(6, "127.0.0.1", "127.0.0.1", tcp(33000, 8443, PSH | ACK,
                                                                     b"GET / HTTP/1.1\r\n")),
                        dst=bytes(6), src=bytes(6))),
        ("udp4-dns", eth(IP4, ipv4(17, "10.1.2.3", "8.8.8.8", udp(5353, 53)))),
        ("udp4-range", eth(IP4, ipv4(17, "192.168.1.9", "192.168.1.10", udp(8050, 8090)))),
        ("udp4-1234", eth(IP4, ipv4(17, "10.0.0.1", "10.0.0.9",
                                    udp(9999, 7777, b"\x12\x34payload")))),
        ("udp4-mcast", eth(IP4, ipv4(17, "192.168.1.5", "224.0.0.251", udp(5353, 5353)),
                           dst=bytes.fromhex("01005e0000fb"))),
        ("udp4-bcast", eth(IP4, ipv4(17, "0.0.0.0", "255.255.255.255", udp(68, 67, bytes(240))),
                           dst=BROADCAST)),
        ("udp4-jumbo", eth(IP4, ipv4(17, "10.0.0.1", "10.0.0.2",
                                     udp(4000, 4001, rnd.randbytes(1400))))),
        ("icmp4-echo", eth(IP4, ipv4(1, "10.0.0.1", "8.8.8.8", icmp(8)))),
        ("icmp4-reply", eth(IP4, ipv4(1, "8.8.8.8", "10.0.0.1", icmp(0), ttl=117))),
        ("icmp4-ttl1", eth(IP4, ipv4(1, "10.0.0.1", "8.8.4.4", icmp(11), ttl=1))),
        ("frag4-first", eth(IP4, ipv4(6, "10.0.0.1", "192.168.1.2", tcp(40000, 443, ACK,
                                                                          bytes(64)),
                                      frag=0x2000))),
        ("frag4-later", eth(IP4, ipv4(6, "10.0.0.1", "192.168.1.2",
                                      struct.pack("!HH", 443, 443) + bytes(40), frag=0x00B9))),
        ("frag4-udp-later", eth(IP4, ipv4(17, "10.1.2.3", "8.8.8.8",
                                          struct.pack("!HH", 53, 53) + bytes(20),
                                          frag=0x2010))),
        ("ip4-bad-version", eth(IP4, ipv4(6, "10.0.0.1", "10.0.0.2", tcp(1, 443),
                                          version=6))),
        ("arp-request", eth(ARP, arp(1, "10.0.0.1", "10.0.0.2"), dst=BROADCAST)),
        ("arp-reply", eth(ARP, arp(2, "10.0.0.2", "10.0.0.1"))),
        ("vlan42-tcp4", eth(IP4, ipv4(6, "172.16.5.4", "10.0.0.1", tcp(8080, 50000, SYN)),
                            tags=[(VLAN, 42)])),
        ("vlan100-udp6", eth(IP6, ipv6(17, "2001:db8::1", "2001:db8::2", udp(5353, 53)),
                             tags=[(VLAN, 100)])),
        ("qinq-udp4", eth(IP4, ipv4(17, "10.0.0.1", "10.0.0.2", udp(1000, 53)),
                          tags=[(QINQ, 5), (VLAN, 42)])),
        ("tcp6-syn", eth(IP6, ipv6(6, "2001:db8::1", "2001:db8::2", tcp(1234, 80, SYN)))),
        ("udp6-mdns", eth(IP6, ipv6(17, "fe80::1", "ff02::fb", udp(5353, 5353)),
                          dst=bytes.fromhex("3333000000fb"))),
        ("icmp6-echo", eth(IP6, ipv6(58, "2001:db8::1", "2001:db8::2", icmp(128)))),
        ("ip6-hbh-tcp", eth(IP6, ipv6(0, "2001:db8::5", "2001:db8::6",
                                      ext6(6) + tcp(5555, 443, SYN)))),
        ("ip6-rt-frag-udp", eth(IP6, ipv6(43, "2001:db8::7", "2001:db8::8",
                                          ext6(44) + struct.pack("!BBHI", 17, 0, 0, 99)
                                          + udp(53, 5353)))),
        ("ip6-ah-tcp", eth(IP6, ipv6(51, "2001:db8::9", "2001:db8::1",
                                     struct.pack("!BBHII", 6, 4, 0, 1, 1) + bytes(12)
                                     + tcp(6000, 22, ACK)))),
        ("llc", MAC_B + MAC_A + struct.pack("!H", 38) + b"\x42\x42\x03" + bytes(35)),
        ("other-ethertype", eth(0x88CC, bytes(40), dst=bytes.fromhex("0180c200000e"))),
    ]
    out = [Frame(name, data, len(data)) for name, data in frames]
    syn = dict(frames)["tcp4-syn"]
    out += [
        # What a short snapshot length captures: the wire length is the whole frame.
        Frame("trunc-ip-only", syn[:34], len(syn)),
        Frame("trunc-half-tcp", syn[:40], len(syn)),
        Frame("trunc-eth", syn[:13], len(syn)),
        Frame("runt", syn[:10], 10),
        Frame("empty", b"", 60),
        Frame("trunc-big", dict(frames)["udp4-jumbo"][:96], len(dict(frames)["udp4-jumbo"])),
    ]
    return out


CORPUS = _corpus()

EXPRESSIONS = [
    "host 10.0.0.1",
    "src host 10.0.0.1",
    "dst host 10.0.0.1 or dst host 2001:db8::2",
    "net 192.168.0.0/16",
    "dst net 10.0.0.0/8",
    "net 2001:db8::/32",
    "port 443",
    "port 53",
    "tcp dst port 80",
    "portrange 8000-8100",
    "udp portrange 8000-8100",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[tcpflags] & (tcp-rst|tcp-fin) != 0",
    "ip6",
    "ip6 and tcp",
    "ip6 protochain 6",
    "vlan",
    "vlan 42 and tcp",
    "vlan and vlan 42",
    "greater 100",
    "less 80",
    "len <= 60",
    "icmp",
    "icmp[icmptype] = icmp-echoreply",
    "icmp6",
    "arp",
    "arp and ether broadcast",
    "ether multicast",
    "ip multicast",
    "ether src 00:11:22:33:44:55",
    "ip[2:2] > 40",
    "ip[6:2] & 0x1fff != 0",
    "ip[0] & 0xf > 5",
    "tcp[13] = 2",
    "udp[8:2] = 0x1234",
    "not (tcp or udp)",
    "(tcp and port 443) or (udp and not port 53)",
    "ip and not net 10.0.0.0/8",
    # arithmetic, on purpose over packet bytes so that it runs in the filter
    "(ip[2:2] + 1000) / (ip[8] - 64) > 10",  # divides by zero when the TTL is 64: rejects
    "ip[2:2] % (ip[8] - 64) > 3",
    "ether[0:4] + ether[4:4] > ether[8:4]",
    "ip[8] * 3 - ip[9] > 150",
    "ether[6] ^ ether[7] = 0x11",
    "-ip[8] & 0xff > 0x80",
    "ether[12:2] << (ether[15] & 0x3f) > 0x10000",  # shifts by 32..63 give 0
    "ether[12:2] >> (ether[14] & 0x3f) = 0",  # IPv6: a shift by 32,
    "ether[ether[14] & 0x3f] > 0x40",
    "ip[ip[0] & 0xf] != 0",
    "len - 14 = ip[2:2]",
    "ether[100] = 0",
]


# --- pcap files and tcpdump's verdicts -------------------------------------------------------

def write_pcap(path: Path, frames: Sequence[Frame], linktype: int = 1) -> None:
    """One record per frame; record i has timestamp i seconds, which identifies it."""
    with open(path, "wb") as f:
        f.write(pf.pcap_header(linktype))
        for i, frame in enumerate(frames):
            f.write(struct.pack("=IIII", i, 0, len(frame.data), frame.wirelen) + frame.data)


def read_pcap(path: Path) -> list[tuple[int, bytes, int]]:
    """(seconds, captured bytes, wire length) of each record."""
    raw = path.read_bytes()
    magic = struct.unpack_from("<I", raw)[0]
    endian = "<" if magic == 0xA1B2C3D4 else ">"
    assert struct.unpack_from(endian + "I", raw)[0] == 0xA1B2C3D4
    out = []
    pos = 24
    while pos < len(raw):
        sec, _usec, caplen, wirelen = struct.unpack_from(endian + "IIII", raw, pos)
        out.append((sec, raw[pos + 16:pos + 16 + caplen], wirelen))
        pos += 16 + caplen
    return out


def tcpdump_keeps(tcpdump: str, directory: Path, frames: Sequence[Frame],
                  expressions: Sequence[str]) -> dict[str, list[bool]]:
    """For each expression, which frames ``tcpdump -r -w`` keeps."""
    src = directory / "in.pcap"
    write_pcap(src, frames)
    verdicts = {}
    for expression in expressions:
        dst = directory / "out.pcap"
        proc = subprocess.run([tcpdump, "-r", str(src), "-w", str(dst), "--", expression],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        kept = read_pcap(dst)
        for sec, data, wirelen in kept:  # tcpdump copies a kept frame whole
            assert (data, wirelen) == (frames[sec].data, frames[sec].wirelen)
        seconds = {sec for sec, _, _ in kept}
        verdicts[expression] = [i in seconds for i in range(len(frames))]
    return verdicts


@functools.cache
def compiled(expression: str) -> pf.Program:
    return pf.compile_filter(expression)


def disagreements(expression: str, frames: Sequence[Frame], kept: list[bool]) -> list[str]:
    program = compiled(expression)
    return [f"{frame.name} {frame.data.hex()} (wire {frame.wirelen}): tcpdump "
            f"{'keeps' if want else 'drops'} it"
            for frame, want in zip(frames, kept, strict=True)
            if (run(program, frame.data, frame.wirelen) != 0) != want]


@pytest.fixture(scope="module")
def corpus_verdicts(tcpdump: str, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, list[bool]]:
    return tcpdump_keeps(tcpdump, tmp_path_factory.mktemp("pcap"), CORPUS, EXPRESSIONS)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_run_keeps_what_tcpdump_keeps(expression: str,
                                      corpus_verdicts: dict[str, list[bool]]) -> None:
    kept = corpus_verdicts[expression]
    # Each expression splits the corpus, so a filter that accepts or rejects everything
    # cannot pass.
    assert any(kept) and not all(kept), f"{expression!r} does not split the corpus"
    assert disagreements(expression, CORPUS, kept) == []


def test_the_corpus_exercises_every_instruction_class(tcpdump: str) -> None:
    """The expressions reach the instructions the interpreter has (so the comparison with
    tcpdump covers them): indirect and MSH loads, scratch memory, ALU with K and X, every
    conditional jump, ja, tax/txa, len."""
    codes = {insn.code for e in EXPRESSIONS for insn in compiled(e)}
    wanted = {pf.LD | pf.B | pf.IND, pf.LD | pf.H | pf.IND, pf.LDX | pf.B | pf.MSH,
              pf.LD | pf.W | pf.LEN, pf.ST, pf.LD | pf.W | pf.MEM,
              pf.ALU | pf.DIV | pf.X, pf.ALU | pf.MOD | pf.X, pf.ALU | pf.LSH | pf.X,
              pf.ALU | pf.RSH | pf.X, pf.ALU | pf.NEG, pf.ALU | pf.MUL | pf.K,
              pf.ALU | pf.XOR | pf.X, pf.JMP | pf.JA, pf.JMP | pf.JEQ | pf.K,
              pf.JMP | pf.JGT | pf.K, pf.JMP | pf.JGE | pf.K, pf.JMP | pf.JSET | pf.K,
              pf.JMP | pf.JGT | pf.X, pf.MISC | pf.TAX, pf.MISC | pf.TXA}
    assert wanted - codes == set()


# Frames from parts that filters look at, so that generated frames often match something.
_ADDRS4 = ["10.0.0.1", "192.168.1.2", "8.8.8.8", "224.0.0.251", "255.255.255.255"]
_ADDRS6 = ["2001:db8::1", "2001:db8::2", "fe80::1", "ff02::fb"]
_PORTS = st.one_of(st.sampled_from([0, 22, 53, 80, 443, 8050, 65535]),
                   st.integers(0, 0xFFFF))
_BYTE = st.integers(0, 0xFF)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    proto = draw(st.sampled_from([1, 6, 17, 58, 0, 43, 44, 51, 59]) | _BYTE)
    ports = struct.pack("!HH", draw(_PORTS), draw(_PORTS))
    l4 = ports + draw(st.binary(max_size=60))
    kind = draw(st.sampled_from(["ip4", "ip6", "arp", "other"]))
    if kind == "ip4":
        vihl = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x65]) | _BYTE)
        addrs = st.sampled_from(_ADDRS4)
        head = struct.pack("!BBHHHBBH4s4s", vihl, draw(_BYTE), draw(st.integers(0, 0xFFFF)),
                           0, draw(st.sampled_from([0, 0x4000, 0x2000, 0x00B9]) | _PORTS),
                           draw(st.sampled_from([1, 64, 65, 128]) | _BYTE), proto, 0,
                           _ip(draw(addrs)), _ip(draw(addrs)))
        ethertype, payload = IP4, head + draw(st.binary(max_size=40 * (vihl & 1))) + l4
    elif kind == "ip6":
        addrs = st.sampled_from(_ADDRS6)
        ethertype = IP6
        payload = ipv6(proto, draw(addrs), draw(addrs), l4)
    elif kind == "arp":
        ethertype, payload = ARP, arp(draw(st.integers(1, 2)), draw(st.sampled_from(_ADDRS4)),
                                      draw(st.sampled_from(_ADDRS4)))
    else:
        ethertype, payload = draw(st.integers(0, 0xFFFF)), draw(st.binary(max_size=80))
    tags = draw(st.lists(st.tuples(st.sampled_from([VLAN, QINQ, 0x9100]),
                                   st.integers(0, 0xFFFF)), max_size=2))
    dst = draw(st.sampled_from([MAC_B, BROADCAST, bytes.fromhex("01005e0000fb")]))
    data = eth(ethertype, payload, dst=dst, tags=tags)
    if draw(st.booleans()):  # a corrupted byte anywhere
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([draw(_BYTE)]) + data[pos + 1:]
    wirelen = len(data)
    if draw(st.integers(0, 3)) == 0:  # a short snapshot
        data = data[:draw(st.integers(0, len(data)))]
    return Frame("generated", data, wirelen)


# Each example runs tcpdump once per expression: fewer examples than other property tests,
# and no shrinking (minutes of tcpdump runs); a failure names the frames it disagrees on.
_GENERATED_EXAMPLES = max(5, (settings().max_examples or 100) // 10)


@settings(max_examples=_GENERATED_EXAMPLES, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated=st.lists(frames(), min_size=1, max_size=40))
def test_run_keeps_what_tcpdump_keeps_generated(generated: list[Frame], tcpdump: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        verdicts = tcpdump_keeps(tcpdump, Path(d), generated, EXPRESSIONS)
    for expression, kept in verdicts.items():
        assert disagreements(expression, generated, kept) == [], expression


# --- compiling ---------------------------------------------------------------------------------

def test_compile_is_tcpdump_ddd(tcpdump: str, tmp_path: Path) -> None:
    program = pf.compile_filter("tcp port 443")
    assert all(isinstance(insn, Insn) for insn in program)
    # The same program, from the opcode listing tcpdump -d prints for a capture file.
    write_pcap(tmp_path / "h.pcap", [])
    listing = subprocess.run([tcpdump, "-d", "-r", str(tmp_path / "h.pcap"), "tcp port 443"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(listing) == len(program)
    assert listing[-1].split()[1:] == ["ret", "#0"] and program[-1] == (pf.RET, 0, 0, 0)
    assert program[0] == (pf.LD | pf.H | pf.ABS, 0, 0, 12)  # ldh [12]: the ethertype


def test_empty_expression_accepts_everything_without_tcpdump(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "find_tcpdump", lambda: None)
    for blank in ("", "   ", "\n\t"):
        assert pf.compile_filter(blank) == pf.ACCEPT_ALL
    assert all(run(pf.ACCEPT_ALL, f.data, f.wirelen) for f in CORPUS)
    match = pf.compile_matcher(None)
    assert all(match(f.data, f.wirelen) for f in CORPUS)
    assert pf.compile_matcher("  ")(b"", 0)


def test_linktype_is_the_compilation_target(tcpdump: str) -> None:
    raw4 = ipv4(6, "10.0.0.1", "10.0.0.2", tcp(1, 443))
    raw6 = ipv6(6, "2001:db8::1", "2001:db8::2", tcp(1, 443))
    on_raw = pf.compile_matcher("ip and port 443", linktype=101)  # LINKTYPE_RAW
    on_eth = pf.compile_matcher("ip and port 443")
    assert on_raw(raw4, len(raw4)) and not on_raw(raw6, len(raw6))
    assert not on_eth(raw4, len(raw4))
    assert on_eth(eth(IP4, raw4), len(raw4) + 14)


def test_matcher_uses_the_wire_length(tcpdump: str) -> None:
    match = pf.compile_matcher("greater 100")
    frame = eth(IP4, ipv4(17, "10.0.0.1", "10.0.0.2", udp(1, 2)))
    assert not match(frame, len(frame)) and match(frame, 101)


@pytest.mark.parametrize(("expression", "complaint"), [
    ("tcp port", "syntax error"),
    ("host 10.0.0.1 and", "syntax error"),
    ("ip[", "syntax error"),
    ("port 99999", "illegal port number 99999"),
    ("ip[2:2] / 0 > 1", "division by zero"),
    ("ether[0] << 40 = 0", "shift by more than 31 bits"),
    ("net 10.0.0.1/8", "non-network bits set"),
    ("ether host zz", "unknown ether host"),
    ("ip and not ip", "expression rejects all packets"),
    ("-v", "syntax error"),  # an expression, not an option
])
def test_bad_expression_is_one_line_config_error(expression: str, complaint: str,
                                                 tcpdump: str) -> None:
    with pytest.raises(ConfigError) as info:
        pf.compile_filter(expression)
    message = str(info.value)
    assert complaint in message and repr(expression) in message
    assert "\n" not in message and "reading from file" not in message
    assert "tcpdump:" not in message
    with pytest.raises(ConfigError):
        pf.compile_matcher(expression)


def test_missing_tcpdump_says_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pf, "_TCPDUMP_DIRS", ())
    assert pf.find_tcpdump() is None
    with pytest.raises(ConfigError, match="install it"):
        pf.compile_filter("tcp")


def test_tcpdump_found_outside_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "sbin" / "tcpdump"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pf, "_TCPDUMP_DIRS", (str(fake.parent),))
    assert pf.find_tcpdump() == str(fake)


@pytest.mark.parametrize("text", ["", "2\n6 0 0 1\n", "1\n6 0 0\n", "x\n", "1\n6 0 0 -1\n",
                                  "1\n6 0 300 1\n"])
def test_parse_ddd_rejects_malformed_output(text: str) -> None:
    with pytest.raises(ValueError, match=r"instruction|count|announced|invalid literal"):
        pf.parse_ddd(text)


def test_parse_ddd() -> None:
    assert pf.parse_ddd("2\n40 0 0 12\n6 0 0 4294967295\n") == (
        Insn(0x28, 0, 0, 12), Insn(6, 0, 0, 0xFFFFFFFF))


# --- the interpreter, instruction by instruction ----------------------------------------------
#
# Small hand-assembled programs for what tcpdump never emits (RET A, division by a constant
# zero, shifts by 32 or more, X + k past 2**32) or where an edge matters.

def _i(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> Insn:
    return Insn(code, jt, jf, k & 0xFFFFFFFF)


RET_A = _i(pf.RET | pf.RET_A)
PKT = bytes(range(1, 33))  # 32 bytes: 01 02 03 ... 20


def _alu(a: int, op: int, operand: int, *, by_x: bool, result: int) -> int:
    """Run "A op operand" and compare A with ``result``: 1 if equal, 2 if not, 0 if the
    program rejected (a division by zero)."""
    if by_x:
        prog = [_i(pf.LDX | pf.W | pf.IMM, operand), _i(pf.LD | pf.W | pf.IMM, a),
                _i(pf.ALU | op | pf.X)]
    else:
        prog = [_i(pf.LD | pf.W | pf.IMM, a), _i(pf.ALU | op | pf.K, operand)]
    return run([*prog, _i(pf.JMP | pf.JEQ, result, 0, 1), _i(pf.RET, 1), _i(pf.RET, 2)], PKT)


@pytest.mark.parametrize("by_x", [False, True])
@pytest.mark.parametrize(("a", "op", "operand", "result"), [
    (0xFFFFFFFF, pf.ADD, 2, 1),
    (1, pf.SUB, 2, 0xFFFFFFFF),
    (0x10000, pf.MUL, 0x10001, 0x10000),
    (100, pf.DIV, 7, 14),
    (0xFFFFFFFF, pf.DIV, 0x80000000, 1),
    (100, pf.MOD, 7, 2),
    (0xF0F0, pf.OR, 0x0F00, 0xFFF0),
    (0xF0F0, pf.AND, 0x0FF0, 0x00F0),
    (0xF0F0, pf.XOR, 0xFFFF, 0x0F0F),
    (0x80000001, pf.LSH, 1, 2),
    (1, pf.LSH, 31, 0x80000000),
    (1, pf.LSH, 32, 0),
    (0xFFFFFFFF, pf.LSH, 1000, 0),
    (0x80000000, pf.RSH, 31, 1),
    (0x80000000, pf.RSH, 32, 0),
])
def test_alu(a: int, op: int, operand: int, result: int, by_x: bool) -> None:
    assert _alu(a, op, operand, by_x=by_x, result=result) == 1
    assert _alu(a, op, operand, by_x=by_x, result=result ^ 1) == 2


@pytest.mark.parametrize("op", [pf.DIV, pf.MOD])
@pytest.mark.parametrize("by_x", [False, True])
def test_division_by_zero_rejects(op: int, by_x: bool) -> None:
    assert _alu(7, op, 0, by_x=by_x, result=0) == 0
    assert _alu(7, op, 0, by_x=by_x, result=7) == 0


def test_neg() -> None:
    assert run([_i(pf.LD | pf.IMM, 5), _i(pf.ALU | pf.NEG), RET_A], PKT) == 0xFFFFFFFB
    assert run([_i(pf.LD | pf.IMM, 0), _i(pf.ALU | pf.NEG), _i(pf.ALU | pf.ADD, 9), RET_A],
               PKT) == 9


@pytest.mark.parametrize(("load", "value"), [
    (_i(pf.LD | pf.W | pf.ABS, 0), 0x01020304),
    (_i(pf.LD | pf.H | pf.ABS, 30), 0x1F20),
    (_i(pf.LD | pf.B | pf.ABS, 31), 0x20),
    (_i(pf.LD | pf.W | pf.ABS, 28), 0x1D1E1F20),
    (_i(pf.LD | pf.W | pf.ABS, 29), None),  # one byte past the end
    (_i(pf.LD | pf.H | pf.ABS, 31), None),
    (_i(pf.LD | pf.B | pf.ABS, 32), None),
    (_i(pf.LD | pf.B | pf.ABS, 0xFFFFFFFF), None),
    (_i(pf.LD | pf.W | pf.LEN), 32),
])
def test_loads(load: Insn, value: int | None) -> None:
    # A value of 0 still accepts (+1); an out-of-bounds load returns 0 itself.
    got = run([load, _i(pf.ALU | pf.ADD, 1), RET_A], PKT)
    assert got == (0 if value is None else value + 1)


def test_len_is_the_wire_length() -> None:
    prog = [_i(pf.LD | pf.W | pf.LEN), RET_A]
    assert run(prog, PKT) == 32 and run(prog, PKT, 1514) == 1514
    assert run([_i(pf.LDX | pf.W | pf.LEN), _i(pf.MISC | pf.TXA), RET_A], PKT, 99) == 99


@pytest.mark.parametrize(("x", "k", "size", "value"), [
    (4, 2, pf.H, 0x0708),
    (28, 0, pf.W, 0x1D1E1F20),
    (28, 1, pf.W, None),
    (0xFFFFFFFF, 2, pf.B, None),  # X + k is 2**32 + 1, not 1: no wrap-around
    (2, 0xFFFFFFFF, pf.B, None),
    (0, 31, pf.B, 0x20),
])
def test_indirect_loads(x: int, k: int, size: int, value: int | None) -> None:
    prog = [_i(pf.LDX | pf.IMM, x), _i(pf.LD | size | pf.IND, k), _i(pf.ALU | pf.ADD, 1),
            RET_A]
    assert run(prog, PKT) == (0 if value is None else value + 1)


def test_msh() -> None:
    # X = 4 * (P[k] & 0xf), and A is left alone.
    prog = [_i(pf.LD | pf.IMM, 77), _i(pf.LDX | pf.B | pf.MSH, 14), _i(pf.ALU | pf.ADD | pf.X),
            RET_A]
    assert run(prog, PKT) == 77 + 4 * (0x0F & 0x0F)
    assert run(prog, bytes(14) + b"\x45") == 77 + 20
    assert run(prog, bytes(14)) == 0  # out of bounds


def test_scratch_memory_and_registers() -> None:
    prog = [_i(pf.LD | pf.IMM, 11), _i(pf.ST, 0), _i(pf.LDX | pf.IMM, 22), _i(pf.STX, 15),
            _i(pf.LD | pf.MEM, 15), _i(pf.LDX | pf.MEM, 0), _i(pf.ALU | pf.SUB | pf.X),
            _i(pf.MISC | pf.TAX), _i(pf.LD | pf.MEM, 7),  # never written: 0
            _i(pf.ALU | pf.ADD | pf.X), RET_A]
    assert run(prog, PKT) == 11
    assert run([_i(pf.LDX | pf.IMM, 5), _i(pf.MISC | pf.TXA), RET_A], PKT) == 5


@pytest.mark.parametrize(("op", "k", "taken"), [
    (pf.JEQ, 0x80000000, True), (pf.JEQ, 0x7FFFFFFF, False),
    (pf.JGT, 0x7FFFFFFF, True), (pf.JGT, 0x80000000, False),  # unsigned compares
    (pf.JGE, 0x80000000, True), (pf.JGE, 0x80000001, False),
    (pf.JSET, 0x80000001, True), (pf.JSET, 0x7FFFFFFF, False),
])
@pytest.mark.parametrize("by_x", [False, True])
def test_conditional_jumps(op: int, k: int, taken: bool, by_x: bool) -> None:
    a = [_i(pf.LD | pf.IMM, 0x80000000)]
    if by_x:
        jump = [_i(pf.LDX | pf.IMM, k), _i(pf.JMP | op | pf.X, 0, 1, 2)]
    else:
        jump = [_i(pf.JMP | op | pf.K, k, 1, 2)]
    prog = [*a, *jump, _i(pf.RET, 100), _i(pf.RET, 200), _i(pf.RET, 300)]
    assert run(prog, PKT) == (200 if taken else 300)


def test_ja_forward_and_backward() -> None:
    assert run([_i(pf.JMP | pf.JA, 1), _i(pf.RET, 1), _i(pf.RET, 2)], PKT) == 2
    # ja takes its offset as signed (libpcap's protochain loops): A counts up to 3.
    loop = [_i(pf.LD | pf.IMM, 0),
            _i(pf.ALU | pf.ADD, 1),
            _i(pf.JMP | pf.JEQ, 3, 1, 0),
            _i(pf.JMP | pf.JA, -3),
            RET_A]
    assert run(loop, PKT) == 3


def test_endless_loop_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "MAX_STEPS", 1000)
    assert run([_i(pf.JMP | pf.JA, -1)], PKT) == 0


@pytest.mark.parametrize(("program", "why"), [
    ([Insn(0x07 | 0x40, 0, 0, 0)], "unknown cBPF instruction"),  # unknown MISC
    ([Insn(pf.RET | pf.X, 0, 0, 0)], "unknown cBPF instruction"),  # not in libpcap or Linux
    ([Insn(pf.LD | pf.IMM, 0, 0, 1)], "end"),  # falls off the end
    ([Insn(pf.ST, 0, 0, 16), Insn(pf.RET, 0, 0, 1)], "scratch memory index 16"),
    ([Insn(pf.JMP | pf.JEQ, 5, 0, 0), Insn(pf.RET, 0, 0, 1)], "end|jump"),  # jumps out
])
def test_malformed_programs_raise(program: list[Insn], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        run(program, PKT)
    with pytest.raises(ValueError, match=why):
        pf.validate(program)


def test_validate() -> None:
    pf.validate(pf.ACCEPT_ALL)
    with pytest.raises(ValueError, match="instructions"):
        pf.validate([])
    with pytest.raises(ValueError, match="instructions"):
        pf.validate([Insn(pf.LD | pf.IMM, 0, 0, 0)] * pf.MAXINSNS + [Insn(pf.RET, 0, 0, 0)])
    with pytest.raises(ValueError, match="return"):
        pf.validate([Insn(pf.RET, 0, 0, 0), Insn(pf.LD | pf.IMM, 0, 0, 0)])
    with pytest.raises(ValueError, match="jump"):  # ja back before the first instruction
        pf.validate([Insn(pf.JMP | pf.JA, 0, 0, 0xFFFFFFFE), Insn(pf.RET, 0, 0, 0)])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), wirelen=st.integers(0, 1 << 20))
def test_valid_programs_never_raise(data: bytes, wirelen: int, tcpdump: str) -> None:
    for program in _sample_programs():
        assert run(program, data, max(wirelen, len(data))) >= 0


_SAMPLES: list[pf.Program] = []


def _sample_programs() -> list[pf.Program]:
    if not _SAMPLES:
        _SAMPLES.extend(compiled(e) for e in EXPRESSIONS[::4])
    return _SAMPLES

"""A small tcpdump-like filter over raw Ethernet frames, pure (no I/O, no name lookups).

Grammar (precedence ``not`` > ``and`` > ``or``)::

    expr      := and_expr (("or" | "||") and_expr)*
    and_expr  := not_expr (["and" | "&&"] not_expr)*   (juxtaposition means "and")
    not_expr  := ("not" | "!") not_expr | "(" expr ")" | primitive
    primitive := "tcp" | "udp" | "icmp" | "ip" | "ip6"
               | ["src" | "dst"] "host" ADDR | ("src" | "dst") ADDR
               | ["src" | "dst"] "port" N
               | "net" CIDR

Frames are Ethernet II, optionally with one 802.1Q tag, carrying IPv4 or IPv6 (the IPv6
next header is read directly; extension headers are not walked). ``icmp`` matches ICMP over
IPv4 and ICMPv6 over IPv6. ``port`` matches TCP and UDP; IPv4 fragments after the first
carry no ports. A frame that is too short or not IP matches no primitive, so only a negated
expression can accept it. Matching never raises, whatever the bytes.

A bad expression raises :class:`~ecapture.errors.ConfigError` naming the offending token and
its 1-based position in the expression.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ecapture.errors import ConfigError

FrameFilter = Callable[[bytes], bool]

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = 0x8100

_PROTO_ICMP = 1
_PROTO_TCP = 6
_PROTO_UDP = 17
_PROTO_ICMPV6 = 58


@dataclass(frozen=True, slots=True)
class _Packet:
    version: int  # 4 or 6
    src: bytes
    dst: bytes
    proto: int
    sport: int | None
    dport: int | None


def _parse_frame(frame: bytes) -> _Packet | None:
    """The IP summary of an Ethernet frame, or None if it is short, malformed or not IP."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    offset = 14
    if ethertype == _ETH_VLAN:
        if len(frame) < 18:
            return None
        (ethertype,) = struct.unpack_from("!H", frame, 16)
        offset = 18
    if ethertype == _ETH_IPV4:
        if len(frame) < offset + 20:
            return None
        vihl = frame[offset]
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or len(frame) < offset + ihl:
            return None
        (frag,) = struct.unpack_from("!H", frame, offset + 6)
        proto = frame[offset + 9]
        src = bytes(frame[offset + 12:offset + 16])
        dst = bytes(frame[offset + 16:offset + 20])
        transport = offset + ihl
        first_fragment = frag & 0x1FFF == 0
        return _with_ports(4, src, dst, proto, frame, transport if first_fragment else None)
    if ethertype == _ETH_IPV6:
        if len(frame) < offset + 40 or frame[offset] >> 4 != 6:
            return None
        proto = frame[offset + 6]
        src = bytes(frame[offset + 8:offset + 24])
        dst = bytes(frame[offset + 24:offset + 40])
        return _with_ports(6, src, dst, proto, frame, offset + 40)
    return None


def _with_ports(version: int, src: bytes, dst: bytes, proto: int, frame: bytes,
                transport: int | None) -> _Packet:
    sport = dport = None
    if (transport is not None and proto in (_PROTO_TCP, _PROTO_UDP)
            and len(frame) >= transport + 4):
        sport, dport = struct.unpack_from("!HH", frame, transport)
    return _Packet(version, src, dst, proto, sport, dport)


# --- expression compiler -------------------------------------------------------------------

_Pred = Callable[[_Packet | None], bool]

_TOKEN = re.compile(r"\s*(?:(&&|\|\||[()!])|([A-Za-z0-9_.:/%-]+)|(\S))")


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    pos: int  # 1-based column
    is_word: bool


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if m is None:  # only trailing whitespace is left
            break
        op, word, bad = m.group(1), m.group(2), m.group(3)
        if bad is not None:
            raise ConfigError(f"filter: unexpected character {bad!r} at position "
                              f"{m.start(3) + 1}")
        if op is not None:
            tokens.append(_Token(op, m.start(1) + 1, False))
        else:
            tokens.append(_Token(word, m.start(2) + 1, True))
        i = m.end()
    return tokens


_PROTOCOLS: dict[str, _Pred] = {
    "tcp": lambda p: p is not None and p.proto == _PROTO_TCP,
    "udp": lambda p: p is not None and p.proto == _PROTO_UDP,
    "icmp": lambda p: p is not None and (
        (p.version == 4 and p.proto == _PROTO_ICMP)
        or (p.version == 6 and p.proto == _PROTO_ICMPV6)),
    "ip": lambda p: p is not None and p.version == 4,
    "ip6": lambda p: p is not None and p.version == 6,
}

_KEYWORDS = frozenset({"and", "or", "not", "host", "port", "net", "src", "dst",
                       *_PROTOCOLS})


class _Parser:
    def __init__(self, expr: str):
        self.tokens = _tokenize(expr)
        self.i = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, what: str) -> _Token:
        tok = self.peek()
        if tok is None:
            after = f" after {self.tokens[-1].text!r}" if self.tokens else ""
            raise ConfigError(f"filter: expected {what}{after}, got end of expression")
        self.i += 1
        return tok

    @staticmethod
    def unexpected(tok: _Token, what: str | None = None) -> ConfigError:
        expected = f" (expected {what})" if what else ""
        return ConfigError(f"filter: unexpected {tok.text!r} at position {tok.pos}{expected}")

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text.lower() in texts

    def parse(self) -> _Pred:
        pred = self.parse_or()
        tok = self.peek()
        if tok is not None:
            raise self.unexpected(tok, "'and', 'or' or end of expression")
        return pred

    def parse_or(self) -> _Pred:
        preds = [self.parse_and()]
        while self.at("or", "||"):
            self.i += 1
            preds.append(self.parse_and())
        if len(preds) == 1:
            return preds[0]
        return lambda p: any(f(p) for f in preds)

    def parse_and(self) -> _Pred:
        preds = [self.parse_not()]
        while True:
            if self.at("and", "&&"):
                self.i += 1
            elif self.peek() is None or self.at("or", "||", ")"):
                break
            # Juxtaposition means "and", as in tcpdump: "tcp port 443".
            preds.append(self.parse_not())
        if len(preds) == 1:
            return preds[0]
        return lambda p: all(f(p) for f in preds)

    def parse_not(self) -> _Pred:
        if self.at("not", "!"):
            self.i += 1
            inner = self.parse_not()
            return lambda p: not inner(p)
        tok = self.next("a primitive")
        if tok.text == "(":
            pred = self.parse_or()
            close = self.next("')'")
            if close.text != ")":
                raise self.unexpected(close, "')'")
            return pred
        if not tok.is_word:
            raise self.unexpected(tok, "a primitive")
        return self.parse_primitive(tok)

    def parse_primitive(self, tok: _Token) -> _Pred:
        word = tok.text.lower()
        if word in _PROTOCOLS:
            return _PROTOCOLS[word]
        if word == "host":
            return _host(self.address(), "either")
        if word == "port":
            return _port(self.port(), "either")
        if word == "net":
            return _net(self.network())
        if word in ("src", "dst"):
            if self.at("host"):
                self.i += 1
                return _host(self.address(), word)
            if self.at("port"):
                self.i += 1
                return _port(self.port(), word)
            return _host(self.address(), word)
        raise self.unexpected(tok, "a primitive")

    def operand(self, what: str) -> _Token:
        tok = self.next(what)
        if not tok.is_word or tok.text.lower() in _KEYWORDS:
            raise self.unexpected(tok, what)
        return tok

    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        tok = self.operand("an IP address")
        try:
            return ipaddress.ip_address(tok.text)
        except ValueError:
            raise ConfigError(f"filter: bad IP address {tok.text!r} at position {tok.pos}"
                              ) from None

    def port(self) -> int:
        tok = self.operand("a port number")
        if not tok.text.isdigit() or not tok.text.isascii() or int(tok.text) > 0xFFFF:
            raise ConfigError(f"filter: bad port {tok.text!r} at position {tok.pos} "
                              "(expected a number 0-65535)")
        return int(tok.text)

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        tok = self.operand("a network like 10.0.0.0/8")
        try:
            return ipaddress.ip_network(tok.text, strict=True)
        except ValueError as e:
            raise ConfigError(f"filter: bad network {tok.text!r} at position {tok.pos}: {e}"
                              ) from None


def _host(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, direction: str) -> _Pred:
    version, packed = addr.version, addr.packed
    if direction == "src":
        return lambda p: p is not None and p.version == version and p.src == packed
    if direction == "dst":
        return lambda p: p is not None and p.version == version and p.dst == packed
    return lambda p: p is not None and p.version == version and packed in (p.src, p.dst)


def _port(port: int, direction: str) -> _Pred:
    if direction == "src":
        return lambda p: p is not None and p.sport == port
    if direction == "dst":
        return lambda p: p is not None and p.dport == port
    return lambda p: p is not None and port in (p.sport, p.dport)


def _net(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> _Pred:
    version = net.version
    base = int(net.network_address)
    mask = int(net.netmask)

    def match(p: _Packet | None) -> bool:
        return p is not None and p.version == version and (
            int.from_bytes(p.src, "big") & mask == base
            or int.from_bytes(p.dst, "big") & mask == base)

    return match


def compile_filter(expr: str | None) -> FrameFilter:
    """Compile ``expr`` into a predicate over raw Ethernet frames; empty accepts all.

    Raises :class:`~ecapture.errors.ConfigError` if the expression is malformed.
    """
    if expr is None or not expr.strip():
        return lambda frame: True
    pred = _Parser(expr).parse()

    def match(frame: bytes) -> bool:
        return pred(_parse_frame(frame))

    return match

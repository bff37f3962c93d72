"""Typed events: what decoders produce and outputs consume. Frozen, slotted, no I/O.

Events shared by several modules live here (every TLS library yields ``SslData``); a module
with events of its own declares them in its own file and gives them the two methods of
:class:`ModuleEvent`, so the text and json models show them without knowing the module.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

AF_INET = 2
AF_INET6 = 10

TLS_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                0x0304: "TLSv1.3"}


def comm_str(raw: bytes) -> str:
    """A kernel task comm: NUL-terminated inside 16 bytes; bytes after the NUL are garbage."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def addr_str(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == AF_INET6:
        addr = ipaddress.IPv6Address(raw[:16])
        return str(addr.ipv4_mapped or addr)
    return "?"


class ModuleEvent(Protocol):
    """What a module's own event offers the outputs: ``text_line`` (after the time, one line
    of the text model) and ``json_fields`` (beside "type": ``json_type``, "time" and "ts_ns";
    bytes values become text or base64 as everywhere in the json model)."""

    json_type: ClassVar[str]
    timestamp_ns: int

    def text_line(self) -> str: ...

    def json_fields(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Conn:
    """A TCP connection of a traced process, or its end (kind "close"). Kind "proc": set up
    before capture started, found in /proc when its first data showed up."""

    timestamp_ns: int
    kind: Literal["connect", "accept", "close", "proc"]
    pid: int
    tid: int
    uid: int
    comm: str
    fd: int
    sock: int
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int

    @property
    def local(self) -> str:
        return _endpoint(self.laddr, self.lport)

    @property
    def remote(self) -> str:
        return _endpoint(self.raddr, self.rport)


def _endpoint(addr: str, port: int) -> str:
    if addr == "?":
        return "?"
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


@dataclass(frozen=True, slots=True)
class SslData:
    """The plaintext of one TLS read or write call, joined from its chunks."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    fd: int
    version: int
    direction: Literal["read", "write"]
    func: str
    ssl: int
    data: bytes
    total_len: int  # what the call returned; len(data) is smaller only if chunks were lost
    conn: Conn | None = None

    @property
    def version_name(self) -> str:
        return TLS_VERSIONS.get(self.version, f"0x{self.version:04x}" if self.version else "?")

    @property
    def missing(self) -> int:
        return self.total_len - len(self.data)


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet the TC classifier saw, as it was on the wire (pcap model)."""

    timestamp_ns: int
    ifindex: int
    direction: Literal["ingress", "egress"]
    length: int  # on the wire; len(data) is smaller only for packets over 64 KiB
    data: bytes


@dataclass(frozen=True, slots=True)
class LostNotice:
    """The kernel dropped ``count`` events of one map (buffer full)."""

    recv_ns: int
    module: str
    map_name: str
    count: int


Event = Conn | SslData | Packet | LostNotice

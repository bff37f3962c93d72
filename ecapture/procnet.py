"""The TCP 4-tuple of a process's socket fd, from /proc: for connections that were set up
before capture started, which no connect/accept tracepoint saw.

Reads /proc only; no root needed for one's own processes. Used by the live layer, which
records what it finds as an ordinary connection event, so replay needs no /proc.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

AF_INET = 2
AF_INET6 = 10


@dataclass(frozen=True)
class SocketTuple:
    family: int
    laddr: bytes  # 16 bytes, IPv4 in the first 4, network order
    lport: int
    raddr: bytes
    rport: int


def socket_inode(pid: int, fd: int) -> int | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    m = re.fullmatch(r"socket:\[(\d+)\]", target)
    return int(m.group(1)) if m else None


def _addr(hexaddr: str, family: int) -> bytes:
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return words.ljust(16, b"\0") if family == AF_INET else words


def parse_proc_net_tcp(text: str, family: int) -> dict[int, SocketTuple]:
    """inode -> tuple for every socket listed in a /proc/net/tcp or tcp6 text."""
    out: dict[int, SocketTuple] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        (laddr, lport), (raddr, rport) = (f.split(":") for f in fields[1:3])
        out[int(fields[9])] = SocketTuple(family, _addr(laddr, family), int(lport, 16),
                                          _addr(raddr, family), int(rport, 16))
    return out


def lookup(pid: int, fd: int) -> SocketTuple | None:
    """The tuple of socket ``fd`` of process ``pid``, or None (not a TCP socket, gone)."""
    inode = socket_inode(pid, fd)
    if inode is None:
        return None
    for name, family in (("tcp", AF_INET), ("tcp6", AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                found = parse_proc_net_tcp(f.read(), family).get(inode)
        except OSError:
            continue
        if found is not None:
            return found
    return None


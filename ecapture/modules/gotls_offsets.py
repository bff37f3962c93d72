"""What kern/gotls.c reads from a tls.Conn, per Go release: pure data.

The socket fd: tls.Conn.conn (a net.Conn interface: its data word) -> the *net.TCPConn's
embedded net.conn.fd (a *netFD) -> netFD.pfd (a poll.FD) .Sysfd, laid out alike in every
release. The TLS version: tls.Conn.vers, which moved when Go 1.21 added the QUIC state
before it. The rows were checked against each release's own DWARF by the gotls live tests
(1.19, 1.21 to 1.27: the releases there are toolchains for); 1.17, 1.18 and 1.20 follow
from the struct's declaration in their source (conn, isClient, handshakeFn, a 4-byte
handshake status, a Mutex, handshakeErr, then vers). A release outside the table is
refused with one line rather than read through a guess.

The functions hooked and their signatures ((*Conn).Read/Write(b []byte) (int, error),
(*Config).writeKeyLog(label string, clientRandom, secret []byte) error) are the same in
every listed release too; a future release that changes them needs a new row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GoOffsets:
    """Byte offsets, each within its own struct."""

    conn_data: int     # tls.Conn.conn's data word (the interface's second word)
    netconn_fd: int    # net.conn.fd, the first field of every net.*Conn
    netfd_sysfd: int   # netFD.pfd.Sysfd: poll.FD starts with a 16-byte fdMutex
    conn_vers: int     # tls.Conn.vers, a uint16: the negotiated version, 0 before

    def cflags(self) -> list[str]:
        return [f"-DGO_CONN_DATA_OFFSET={self.conn_data}",
                f"-DGO_NETCONN_FD_OFFSET={self.netconn_fd}",
                f"-DGO_NETFD_SYSFD_OFFSET={self.netfd_sysfd}",
                f"-DGO_CONN_VERS_OFFSET={self.conn_vers}"]


# (first minor, last minor) -> offsets, oldest first.
LAYOUTS: tuple[tuple[tuple[int, int], tuple[int, int], GoOffsets], ...] = (
    ((1, 17), (1, 20), GoOffsets(conn_data=8, netconn_fd=0, netfd_sysfd=16, conn_vers=64)),
    ((1, 21), (1, 27), GoOffsets(conn_data=8, netconn_fd=0, netfd_sysfd=16, conn_vers=72)),
)
FIRST = LAYOUTS[0][0]
LAST = LAYOUTS[-1][1]


def go_offsets(minor: tuple[int, int]) -> GoOffsets | None:
    """The offsets for Go release ``(1, minor)``, or None when the release is not known."""
    for first, last, offsets in LAYOUTS:
        if first <= minor <= last:
            return offsets
    return None

"""/proc lookups of socket tuples, checked against the sockets' own getsockname/getpeername
on real loopback connections (IPv4 and IPv6)."""

from __future__ import annotations

import os
import socket

import pytest

from ecapture import procnet


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])
def test_lookup_matches_the_socket(family: int, host: str) -> None:
    try:
        server = socket.create_server((host, 0), family=family)
    except OSError as e:
        pytest.skip(f"no {host} here: {e}")
    with server, socket.create_connection(server.getsockname()[:2]) as client:
        accepted, _ = server.accept()
        with accepted:
            for sock in (client, accepted):
                found = procnet.lookup(os.getpid(), sock.fileno())
                assert found is not None
                size = 4 if family == socket.AF_INET else 16
                local, remote = sock.getsockname(), sock.getpeername()
                assert found.family == (2 if family == socket.AF_INET else 10)
                assert found.laddr[:size] == socket.inet_pton(family, local[0])
                assert found.raddr[:size] == socket.inet_pton(family, remote[0])
                assert (found.lport, found.rport) == (local[1], remote[1])


def test_not_a_socket() -> None:
    r, w = os.pipe()
    try:
        assert procnet.lookup(os.getpid(), r) is None
    finally:
        os.close(r)
        os.close(w)
    assert procnet.lookup(os.getpid(), 987654) is None

"""detect(): which HTTP parser fits the first bytes a side sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecapture.parsers.detect import H2_PREFACE, MAX_SNIFF, detect


def test_preface_is_http2() -> None:
    assert detect(H2_PREFACE) == "http2"
    assert detect(H2_PREFACE + b"\x00\x00\x12\x04\x00") == "http2"  # a SETTINGS frame follows


@pytest.mark.parametrize("length", range(len(H2_PREFACE)))
def test_every_strict_prefix_of_the_preface_needs_more(length: int) -> None:
    assert detect(H2_PREFACE[:length]) == "need_more"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"PUT ", b"HEAD /", b"DELETE /a",
    b"OPTIONS * HTTP/1.1", b"PATCH /p", b"CONNECT example.com:443 HTTP/1.1", b"TRACE / ",
    b"PROPFIND /dav HTTP/1.1", b"M-SEARCH * HTTP/1.1", b"BREW /pot HTTP/1.1",
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 404 Not Found\r\n",
])
def test_http1_starts(data: bytes) -> None:
    assert detect(data) == "http1"


@pytest.mark.parametrize("data", [
    b"", b"G", b"GE", b"GET", b"H", b"HT", b"HTTP", b"HTTP/", b"HTTP/1", b"BREW ", b"P", b"PR",
    b"PRI", b"PRI * HTTP/2.0\r\n",
])
def test_too_short_to_tell(data: bytes) -> None:
    assert detect(data) == "need_more"


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
    b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03",  # TLS ServerHello
    b"\x17\x03\x03\x00\x20",  # TLS application data
    b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",  # an HTTP/2 frame without the preface
    b"get / HTTP/1.1\r\n", b"hello world", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/2 200\r\n",
    b"PRI * HTTP/1.1\r\n", b"GET\t/", b"BREW \x00", b" GET / HTTP/1.1",
    b"A" * MAX_SNIFF, b"A" * (MAX_SNIFF - 1) + b" ",
])
def test_not_http(data: bytes) -> None:
    assert detect(data) is None


def test_decides_within_the_cap() -> None:
    # 23 upper-case letters could still be a method; 24 cannot be told apart any more.
    assert detect(b"A" * (MAX_SNIFF - 1)) == "need_more"
    assert detect(b"A" * MAX_SNIFF + b" /") is None


@given(st.binary(max_size=64))
def test_total_and_consistent_with_longer_input(data: bytes) -> None:
    verdict = detect(data)
    assert verdict in ("http1", "http2", "need_more", None)
    if len(data) >= MAX_SNIFF:
        assert verdict != "need_more"
        assert detect(data[:MAX_SNIFF]) == verdict  # only the first 24 bytes matter
    if verdict in ("http1", "http2", None):
        # A decision is final: more bytes never change it.
        assert detect(data + b"GET / HTTP/1.1\r\n") == verdict


@given(st.binary(max_size=MAX_SNIFF))
def test_need_more_means_a_prefix_could_still_be_http(data: bytes) -> None:
    if detect(data) == "need_more":
        assert len(data) < MAX_SNIFF


def test_an_http2_servers_opening_settings_may_open_a_server() -> None:
    from ecapture.parsers.detect import may_open_http2_server

    settings = b"\x00\x00\x12\x04\x00\x00\x00\x00\x00" + bytes(18)
    assert may_open_http2_server(settings)
    assert all(may_open_http2_server(settings[:n]) for n in range(9))  # too short to tell
    assert not may_open_http2_server(b"\x00\x00\x12\x04\x01\x00\x00\x00\x00")  # an ACK
    assert not may_open_http2_server(b"\x00\x00\x12\x01\x04\x00\x00\x00\x01")  # HEADERS
    assert not may_open_http2_server(b"\x00\x00\x07\x04\x00\x00\x00\x00\x00")  # not 6n bytes
    assert not may_open_http2_server(b"\x00\x00\x06\x04\x00\x00\x00\x00\x03")  # a stream
    assert not may_open_http2_server(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert not may_open_http2_server(b"220 smtp.example ESMTP\r\n")

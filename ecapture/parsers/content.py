"""Content-Encoding, shared by the HTTP/1 and HTTP/2 parsers. Pure: bytes in, bytes out."""

from __future__ import annotations

import zlib

# A decompression bomb must not take the capture down: bodies that would inflate beyond
# this are shown as sent.
MAX_DECODED = 64 * 1024 * 1024


def decode_body(wire: bytes, headers: list[tuple[str, str]], complete: bool) -> bytes:
    """Undo content-encoding (RFC 9110 §8.4: the last coding listed was applied last). On
    any failure, an unknown coding or a body too large, the wire bytes are kept."""
    codings = [c.strip().lower() for n, v in headers if n == "content-encoding"
               for c in v.split(",")]
    body = wire
    for coding in reversed([c for c in codings if c and c != "identity"]):
        decoded = _inflate(body, coding, complete)
        if decoded is None:
            return wire
        body = decoded
    return body


def _inflate(data: bytes, coding: str, complete: bool) -> bytes | None:
    if coding in ("gzip", "x-gzip"):
        attempts: tuple[int, ...] = (16 + zlib.MAX_WBITS,)
    elif coding == "deflate":  # should be zlib-wrapped (RFC 9110 §8.4.1.2); raw is common
        attempts = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        return None
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, MAX_DECODED)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:  # hit MAX_DECODED
            return None
        # A truncated capture may still decode partly; a complete body must decode entirely.
        if inflater.eof or (not complete and out):
            return out
    return None

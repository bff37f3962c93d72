"""A real HTTPS client for live tests: Python's http.client over the ssl module.

usage: https_client.py PORT get PATH [PATH ...]   one connection per path
       https_client.py PORT upload NBYTES         POST NBYTES of a known text pattern
Prints one JSON line per request: path, local port, status, response body.
"""

import http.client
import json
import ssl
import sys


def pattern(n: int) -> bytes:
    """Printable, line-structured and position-dependent, so a lost or repeated chunk shows."""
    out = bytearray()
    line = 0
    while len(out) < n:
        out += f"line {line:07d} of the upload pattern abcdefghijklmnopqrstuvwxyz\n".encode()
        line += 1
    return bytes(out[:n])


def request(port: int, method: str, path: str, body: bytes | None = None) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.connect()
    local_port = conn.sock.getsockname()[1]
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    print(json.dumps({"path": path, "local_port": local_port, "status": resp.status,
                      "body": data.decode()}), flush=True)


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "get":
        for path in sys.argv[3:]:
            request(port, "GET", path)
    elif mode == "upload":
        request(port, "POST", "/upload", pattern(int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

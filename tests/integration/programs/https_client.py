"""A real HTTPS client for live tests: Python's http.client over the ssl module.

usage: https_client.py PORT get PATH [PATH ...]   one connection per path
       https_client.py PORT upload NBYTES         POST NBYTES of a known text pattern
       https_client.py PORT session PATH [PATH ...] all on one keep-alive connection
       https_client.py PORT upload-wait NBYTES    connect, wait for a line on stdin, upload
       https_client.py PORT keepalive P1 P2 ...   P1, then each next path on the same
                                                  connection after a line on stdin; close
                                                  after another
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


def request(port: int, method: str, path: str, body: bytes | None = None,
            wait: bool = False) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.connect()
    local_port = conn.sock.getsockname()[1]
    if wait:
        print(json.dumps({"connected": local_port}), flush=True)
        sys.stdin.readline()
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    print(json.dumps({"path": path, "local_port": local_port, "status": resp.status,
                      "body": data.decode()}), flush=True)


def session(port: int, paths: list[str]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    for path in paths:
        # Accept-Encoding: gzip so the server may compress; http.client does not decode.
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        body = resp.read()
        print(json.dumps({"path": path, "local_port": conn.sock.getsockname()[1],
                          "status": resp.status, "body_len": len(body)}), flush=True)
    conn.close()


def keepalive(port: int, paths: list[str]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    for n, path in enumerate(paths):
        if n:
            sys.stdin.readline()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        print(json.dumps({"path": path, "local_port": conn.sock.getsockname()[1],
                          "status": resp.status, "body": body.decode()}), flush=True)
    sys.stdin.readline()  # stay connected until told: /proc must still show the socket
    conn.close()


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "get":
        for path in sys.argv[3:]:
            request(port, "GET", path)
    elif mode == "session":
        session(port, sys.argv[3:])
    elif mode == "keepalive":
        keepalive(port, sys.argv[3:])
    elif mode == "upload-wait":
        request(port, "POST", "/upload", pattern(int(sys.argv[3])), wait=True)
    elif mode == "upload":
        request(port, "POST", "/upload", pattern(int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

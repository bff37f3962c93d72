"""A real HTTPS server for live tests: Python's http.server over the ssl module (OpenSSL).

GET /PATH answers "hello PATH" (GET /chunked: a chunked body; GET /gzip: a gzip-encoded
body; both of text ``expected_body(path)``; GET /size/N: N bytes); POST answers the byte
count and sha256 of the body. Every
request is logged to stdout as one JSON line with the client's address, so tests know the
ground-truth 4-tuple. Prints "READY <port>" once listening.
"""

import gzip
import hashlib
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def expected_body(path: str) -> bytes:
    if path in ("/chunked", "/gzip"):
        return "".join(f"{path} line {i:04d}\n" for i in range(400)).encode()
    if path.startswith("/size/"):  # /size/N: N bytes of numbered lines
        size = int(path.split("/")[2])
        lines = "".join(f"{path} line {i:07d}\n" for i in range(size // 20 + 1)).encode()
        return lines[:size]
    return f"hello {path}\n".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _log(self, **extra: object) -> None:
        host, port = self.client_address[:2]
        print(json.dumps({"method": self.command, "path": self.path, "client": [host, port],
                          **extra}), flush=True)

    def do_GET(self) -> None:
        self._log()
        body = expected_body(self.path)
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 1000):
                piece = body[i:i + 1000]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/gzip":
            packed = gzip.compress(body, mtime=0)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)
        else:
            self._reply(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        remaining, digest = length, hashlib.sha256()
        while remaining:
            block = self.rfile.read(min(remaining, 65536))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
        self._log(length=length - remaining, sha256=digest.hexdigest())
        self._reply(f"got {length - remaining} bytes sha256={digest.hexdigest()}\n".encode())

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    server = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if len(sys.argv) > 3:  # the server's own key log: ground truth for our keylog model
        ctx.keylog_filename = sys.argv[3]
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()

"""A saturating TLS workload for live tests: CLIENTS client processes each SSL-write
WRITES records of 4 KiB to one TLS server as fast as they can, over loopback.

usage: tls_flood.py CERT KEY CLIENTS WRITES

Every record starts with a tag that names its client and its number
(``client-1 write 00042``), so a test can check that each one is in a recording. Prints
one JSON line: the clients' pids, the writes and bytes each sent, what the server read, and
the clients' total writes per second.
"""

import contextlib
import json
import multiprocessing
import os
import socket
import ssl
import sys
import threading
import time

RECORD = 4096


def tag(client: int, n: int) -> bytes:
    return f"client-{client} write {n:05d} ".encode()


def record(client: int, n: int) -> bytes:
    head = tag(client, n)
    return head + b"x" * (RECORD - len(head))


def client(port: int, number: int, writes: int, go: "multiprocessing.Event",
           out: "multiprocessing.Queue") -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw) as s:
        go.wait()
        start = time.monotonic()
        for n in range(writes):
            s.sendall(record(number, n))
        took = time.monotonic() - start
        # Wait for the server to have read everything and close: closing first, with the
        # server's TLS 1.3 session tickets unread, would reset the connection and lose data.
        with contextlib.suppress(OSError):
            while s.recv(65536):
                pass
        out.put((number, writes, took))


def main() -> None:
    cert, key, clients, writes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[int] = []  # per connection: one thread each, no shared counter

    def serve(conn: socket.socket) -> None:
        got = 0
        with sctx.wrap_socket(conn, server_side=True) as s:
            while got < writes * RECORD and (data := s.recv(65536)):
                got += len(data)
        received.append(got)

    go = multiprocessing.Event()
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(port, i, writes, go, out))
             for i in range(1, clients + 1)]
    for p in procs:
        p.start()
    threads = []
    for _ in procs:
        conn, _ = server.accept()
        t = threading.Thread(target=serve, args=(conn,))
        t.start()
        threads.append(t)
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    for t in threads:
        t.join()
    slowest = max(r[2] for r in results)
    print(json.dumps({"pids": [p.pid for p in procs], "server_pid": os.getpid(),
                      "writes": {str(r[0]): r[1] for r in results},
                      "sent": clients * writes * RECORD, "received": sum(received),
                      "writes_per_s": clients * writes / slowest}), flush=True)


if __name__ == "__main__":
    main()

"""The TLS workload of the live benchmarks: N Python clients SSL-write tagged records over
loopback to one Python TLS server that reads and discards.

usage: python bench/tls_workload.py [--clients 2] [--writes 20000] [--size 4096]
                                    [--rate WRITES_PER_S] [--seconds S] [--cert F --key F]

No root needed. Each client is its own process; each write is one SSL_write_ex of --size
bytes starting with a unique tag, ``client-<id> write <nnnnn>``, padded with dots. The
clients connect and finish their handshakes first, then all start writing together; without
--rate they write as fast as they can, with --rate they share that many writes per second,
paced. --seconds instead of --writes: write until that much time has passed. The server
(one process, one thread per connection) reads with recv(65536) until each client closes.

Prints one JSON object on stdout: writes, bytes written, the writing time (first client's
start to last client's end, monotonic clock), writes/s, what the server read, and the pids
of the clients and of the server. Used by bench/saturation.py and bench/soak.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TAG = "client-{id} write {n:05d}"
TIMEOUT_S = 300.0


def serve(args: argparse.Namespace) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = socket.create_server(("127.0.0.1", 0))
    print(srv.getsockname()[1], flush=True)
    totals = [0] * args.clients
    reads = [0] * args.clients

    def drain(i: int, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    totals[i] += len(chunk)
                    reads[i] += 1
                s.unwrap()
        except (OSError, ssl.SSLError):
            pass  # a client gone without close_notify: what it sent was counted

    threads = []
    for i in range(args.clients):
        conn, _ = srv.accept()
        t = threading.Thread(target=drain, args=(i, conn))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    srv.close()
    print(json.dumps({"bytes": sum(totals), "reads": sum(reads)}), flush=True)


def client(args: argparse.Namespace) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args.cert)
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=TIMEOUT_S)
    with ctx.wrap_socket(raw) as s:
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        pad = b"." * args.size
        per_client_rate = args.rate / args.clients if args.rate else 0.0
        start = time.monotonic()
        stop_at = start + args.seconds if args.seconds else None
        n = 0
        while True:
            if stop_at is None:
                if n >= args.writes:
                    break
            elif time.monotonic() >= stop_at:
                break
            if per_client_rate:
                due = start + n / per_client_rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
            tag = TAG.format(id=args.id, n=n).encode()
            s.sendall(tag + pad[len(tag):])
            n += 1
        end = time.monotonic()
        with contextlib.suppress(OSError, ssl.SSLError):
            s.unwrap()
    print(json.dumps({"id": args.id, "writes": n, "start": start, "end": end}), flush=True)


def run_workload(clients: int = 2, writes: int = 20000, size: int = 4096,
                 rate: float = 0.0, seconds: float = 0.0,
                 cert: Path | None = None, key: Path | None = None) -> dict[str, object]:
    """Run the workload (server and clients as child processes); its JSON result."""
    from _common import make_cert

    with tempfile.TemporaryDirectory(prefix="ecap-workload-") as tmp:
        if cert is None or key is None:
            cert, key = make_cert(Path(tmp))
        me = [sys.executable, str(Path(__file__).resolve())]
        common = ["--cert", str(cert), "--key", str(key), "--clients", str(clients)]
        server = subprocess.Popen([*me, "--role", "server", *common],
                                  stdout=subprocess.PIPE, text=True)
        procs: list[subprocess.Popen[str]] = [server]
        try:
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            for i in range(1, clients + 1):
                procs.append(subprocess.Popen(
                    [*me, "--role", "client", *common, "--port", port, "--id", str(i),
                     "--writes", str(writes), "--size", str(size), "--rate", str(rate),
                     "--seconds", str(seconds)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for p in procs[1:]:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a workload client failed to connect")
            for p in procs[1:]:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            results = []
            for p in procs[1:]:
                out, _ = p.communicate(timeout=seconds + TIMEOUT_S if seconds else None)
                results.append(json.loads(out))
            out, _ = server.communicate(timeout=TIMEOUT_S)
            served = json.loads(out)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    total = sum(r["writes"] for r in results)
    took = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"writes": total, "bytes": total * size, "size": size, "seconds": took,
            "writes_per_s": total / took if took > 0 else 0.0,
            "server_bytes": served["bytes"], "server_reads": served["reads"],
            "client_pids": [p.pid for p in procs[1:]], "server_pid": server.pid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=["run", "server", "client"], default="run",
                    help=argparse.SUPPRESS)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--writes", type=int, default=20000, help="writes per client")
    ap.add_argument("--size", type=int, default=4096, help="bytes per write")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="writes per second, all clients together (default: flat out)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="write for this long instead of --writes")
    ap.add_argument("--cert", type=Path)
    ap.add_argument("--key", type=Path)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--id", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.size < len(TAG.format(id=args.clients, n=args.writes)):
        ap.error("--size is smaller than a tag")
    if args.role == "server":
        serve(args)
    elif args.role == "client":
        client(args)
    else:
        result = run_workload(args.clients, args.writes, args.size, args.rate, args.seconds,
                              args.cert, args.key)
        print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

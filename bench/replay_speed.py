"""Replay speed: records per second through Reader -> decode -> dispatch -> text output.

usage: python bench/replay_speed.py [--events N] [--live] [--keep FILE]

Default: builds a recording of at least N records (100k) by repeating the real records of
the shipped curl fixture. --live (root + bcc) instead records a real workload: one Python
TLS connection doing N small writes, captured by `ecapture tls`. Prints figures only; no
thresholds: compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecapture.outputs.text import TextOutput  # noqa: E402
from ecapture.pipeline import Pipeline, bind_from_metadata, reorder_window  # noqa: E402
from ecapture.record import Record  # noqa: E402
from ecapture.record.reader import Reader  # noqa: E402
from ecapture.record.writer import Writer  # noqa: E402
from ecapture.streams import Conversations  # noqa: E402

FIXTURE = ROOT / "fixtures" / "recordings" / "tls" / "curl_http11.ecap"

WORKLOAD = r"""
import socket, ssl, sys, threading, subprocess
n = int(sys.argv[1]); cert, key = sys.argv[2], sys.argv[3]
srv = socket.create_server(("127.0.0.1", 0)); port = srv.getsockname()[1]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
def serve():
    conn, _ = srv.accept()
    with sctx.wrap_socket(conn, server_side=True) as s:
        got = 0
        while got < n * 64:
            data = s.recv(65536)
            if not data: break
            got += len(data)
threading.Thread(target=serve, daemon=True).start()
cctx = ssl.create_default_context(); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
with cctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as c:
    msg = b"x" * 63 + b"\n"
    for _ in range(n):
        c.sendall(msg)
"""


def synthesize(path: Path, n: int) -> None:
    reader = Reader(str(FIXTURE))
    records = [r for r in reader if isinstance(r, Record)]
    with Writer(str(path), reader.metadata) as w:
        written = 0
        while written < n:
            for r in records:
                w.write(r)
            written += len(records)
        w.close()


def live(path: Path, n: int, tmp: Path) -> None:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=bench", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    cap = subprocess.Popen([sys.executable, "-m", "ecapture", "tls", "--record", str(path),
                            "--mapsize", "64"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    line = cap.stderr.readline()
    if "probes attached" not in line:
        raise SystemExit(f"ecapture did not start: {line}")
    subprocess.run([sys.executable, "-c", WORKLOAD, str(n), str(cert), str(key)], check=True)
    time.sleep(1)
    cap.send_signal(2)
    cap.wait(60)


def measure(path: Path) -> None:
    t0 = time.perf_counter()
    count = lost = 0
    for item in Reader(str(path)):
        if isinstance(item, Record):
            count += 1
        else:
            lost += item.count
    t_read = time.perf_counter() - t0

    size = path.stat().st_size
    print(f"recording:        {path} ({size / 2**20:.1f} MiB, {count} records, "
          f"{lost} events lost in capture)")
    print(f"read only:        {count / t_read:,.0f} records/s ({t_read:.2f} s)")
    for label, parsed in (("text --raw", False), ("text (HTTP)", True)):
        reader = Reader(str(path))
        meta = reader.metadata
        with open(os.devnull, "w") as sink:
            pipeline = Pipeline(
                bind_from_metadata(meta), [TextOutput(sink, int(meta.get("clock_offset_ns", 0)))],
                conversations=Conversations(reorder_window(meta)) if parsed else None)
            t0 = time.perf_counter()
            for item in reader:
                pipeline.feed(item)
            pipeline.close()
            t_full = time.perf_counter() - t0
        print(f"replay {label + ':':13} {count / t_full:,.0f} events/s ({t_full:.2f} s), "
              f"{pipeline.events} outputs, {pipeline.decode_errors} decode errors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--live", action="store_true", help="record a real workload (root + bcc)")
    ap.add_argument("--keep", type=Path, help="keep the recording here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = args.keep or tmp / "bench.ecap"
        if args.live:
            live(path, args.events, tmp)
        else:
            synthesize(path, args.events)
        measure(path)


if __name__ == "__main__":
    main()

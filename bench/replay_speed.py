"""Replay speed: records per second read alone, and through the whole replay path
(Reader -> source -> decode -> dispatch -> conversations -> output) for the json, text and
text --raw models, side by side.

usage: python bench/replay_speed.py [--events N] [--live] [--keep FILE] [--use FILE]
                                    [--repeat R] [--cli] [--ecapture DIR ...]

Default: builds a recording of at least N records (100k) by repeating the real records of
the shipped curl fixture. --live (root + bcc) instead records a real workload: one Python
TLS connection doing N small writes, captured by `ecapture tls`. --use measures a
recording made before (e.g. one kept with --keep) instead. The replay path is the one
`ecapture replay` runs, writing to /dev/null through a text stream as stdout would be; each
figure is the best of R runs (the machine may be busy with other work). --cli also times
the command itself, `ecapture replay -m MODEL FILE > /dev/null`, interpreter start-up
included; with --ecapture DIR (repeatable) the command is timed in each checkout, side by
side, e.g. the current tree against `git worktree add /tmp/before <commit>`. Prints figures
only; no thresholds: compare runs made on the same machine.
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

from _common import checkouts  # noqa: E402

from ecapture.outputs import make_output  # noqa: E402
from ecapture.pipeline import Pipeline, bind_from_metadata, reorder_window  # noqa: E402
from ecapture.record import Fact, Record  # noqa: E402
from ecapture.record.format import HEADER_FIXED_CODEC, MAGIC  # noqa: E402
from ecapture.record.reader import Reader  # noqa: E402
from ecapture.record.writer import Writer  # noqa: E402
from ecapture.sources import RecordingSource, run  # noqa: E402
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


# (label, model, --raw, command-line options)
RUNS = (("json", "json", False, ["-m", "json"]), ("text", "text", False, ["-m", "text"]),
        ("text --raw", "text", True, ["-m", "text", "--raw"]))


def read_only(path: Path) -> tuple[float, int, int]:
    """(seconds, records, events lost in capture) to read every item."""
    t0 = time.perf_counter()
    count = lost = 0
    for item in Reader(str(path)):
        if isinstance(item, Record):
            count += 1
        else:
            lost += getattr(item, "count", 0)
    return time.perf_counter() - t0, count, lost


def replay(path: Path, model: str, raw: bool) -> tuple[float, int, int]:
    """(seconds, events output, decode errors) of `ecapture replay -m MODEL [--raw]`."""
    with Reader(str(path)) as reader, open(os.devnull, "w") as sink:
        meta = reader.metadata
        output = make_output(model, sink, int(meta.get("clock_offset_ns", 0)))
        pipeline = Pipeline(bind_from_metadata(meta), [output],
                            conversations=None if raw else Conversations(reorder_window(meta)))
        t0 = time.perf_counter()
        run(RecordingSource(reader), pipeline)
        pipeline.close()
        return time.perf_counter() - t0, pipeline.events, pipeline.decode_errors


def cli(path: Path, options: list[str], checkout: Path = ROOT) -> float:
    """Wall-clock seconds of the command run in CHECKOUT, start-up included."""
    with open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ecapture", "replay", *options,
                               str(path.resolve())], cwd=checkout, stdout=sink)
        elapsed = time.perf_counter() - t0
        # 3: a recording not closed cleanly (--use of a killed capture), replayed whole.
        if done.returncode not in (0, 3):
            raise subprocess.CalledProcessError(done.returncode, done.args)
        return elapsed


def as_version_1(path: Path, out: Path) -> bool:
    """Copy PATH to OUT as a format-1 file, which checkouts older than format 2 read too; the
    bytes differ only in the header's version. False when PATH has FACT frames (format 2)."""
    with Reader(str(path)) as reader:
        if any(isinstance(item, Fact) for item in reader):
            return False
    data = bytearray(path.read_bytes())
    _, _, flags, length = HEADER_FIXED_CODEC.unpack_from(data)
    HEADER_FIXED_CODEC.pack_into(data, 0, MAGIC, 1, flags, length)
    out.write_bytes(data)
    return True


def measure(path: Path, repeat: int = 3, trees: list[tuple[str, Path]] | None = None) -> None:
    """Print the table; TREES are the checkouts whose command is timed (none: no cli column).
    When more than one checkout is compared, all of them read the same format-1 copy."""
    if trees and len(trees) > 1:
        with tempfile.TemporaryDirectory() as d:
            copy = Path(d) / "v1.ecap"
            if not as_version_1(path, copy):
                sys.exit(f"{path} has FACT frames (format 2): older checkouts cannot read it; "
                         "compare on a synthesized recording instead")
            table(copy, repeat, trees)
    else:
        table(path, repeat, trees)


def table(path: Path, repeat: int, trees: list[tuple[str, Path]] | None) -> None:
    t_read, count, lost = min(read_only(path) for _ in range(repeat))
    size = path.stat().st_size
    print(f"recording:   {path} ({size / 2**20:.1f} MiB, {count} records, "
          f"{lost} events lost in capture); best of {repeat}")
    print(f"{'':14}{'records/s':>11}{'seconds':>9}{'outputs':>9}{'errors':>8}"
          + "".join(f"{label[:10] + ' rec/s':>17}{'s':>6}" for label, _ in trees or ()))
    print(f"{'read only':14}{count / t_read:11,.0f}{t_read:9.2f}")
    for label, model, raw, options in RUNS:
        t, events, errors = min(replay(path, model, raw) for _ in range(repeat))
        line = f"{label:14}{count / t:11,.0f}{t:9.2f}{events:9}{errors:8}"
        for _, checkout in trees or ():
            t_cli = min(cli(path, options, checkout) for _ in range(repeat))
            line += f"{count / t_cli:17,.0f}{t_cli:6.2f}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--live", action="store_true", help="record a real workload (root + bcc)")
    ap.add_argument("--keep", type=Path, help="keep the recording here")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (3)")
    ap.add_argument("--cli", action="store_true",
                    help="also time `ecapture replay` itself, start-up included")
    ap.add_argument("--use", type=Path, help="measure this recording instead of making one")
    ap.add_argument("--ecapture", action="append", metavar="DIR",
                    help="with --cli: time the command in this checkout (repeatable; default: "
                         "this one)")
    args = ap.parse_args()
    trees = checkouts(args.ecapture) if args.cli else None
    if args.use:
        measure(args.use, args.repeat, trees)
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = args.keep or tmp / "bench.ecap"
        if args.live:
            live(path, args.events, tmp)
        else:
            synthesize(path, args.events)
        measure(path, args.repeat, trees)


if __name__ == "__main__":
    main()

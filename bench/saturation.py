"""Capture at saturation: what capturing costs a TLS workload that writes flat out, and how
much of it the capture keeps, for a minimal bcc program and for `ecapture tls` of each
checkout, all measured in the same run.

usage: python bench/saturation.py [--writes 20000] [--clients 2] [--size 4096]
                                  [--ecapture DIR]... [--mapsize MiB] [-m MODEL]
                                  [--count raw|replay] [--rounds R] [--no-minimal]
                                  [--keep DIR]

Root + bcc. The workload (bench/tls_workload.py): --clients Python clients each SSL-write
--writes records of --size bytes over loopback, as fast as they can, to one Python TLS
server that reads and discards; every write starts with a unique tag
(``client-1 write 00042``). It runs:

- uncaptured;
- under a minimal bcc program (this file, run as a child process): a uprobe on SSL_write_ex
  of libssl.so.3 whose entry stashes the buffer pointer per thread and whose return copies
  exactly --size bytes into a ring buffer (--mapsize MiB, default 32), drained with bcc's
  open_ring_buffer/ring_buffer_poll by a Python callback that only copies the bytes
  (ctypes.string_at) and counts them; "lost" is its count of failed ring buffer reserves;
- under `ecapture tls --record FILE -m MODEL` of each checkout given with --ecapture
  (repeatable; default: the current tree), stdout to /dev/null, its own default map size
  unless --mapsize is given; "lost" is from its exit summary, or from `ecapture info FILE`
  (run with the checkout's own package) for a checkout that prints no summary.

Both capture all processes (no pid filter), as ecapture does by default: the minimal
program sees the clients' writes only, ecapture also sees the server's reads (about twice the
events). Prints one table: the clients' writes/s (all clients, first write to last), the
ratio to uncaptured, events and lost, how many of the writes' tags are in the recording,
and bytes recorded against bytes written. --count raw (default) finds the tags by scanning
the recording's raw bytes, which works for any checkout; "recorded" is then the file's size
(write and read events plus framing). --count replay decodes the recording with
``ecapture.testing.replay.replay_events`` of the checkout's own package and counts only
write events' tags and payload bytes (slower, and needs memory for every event).
--rounds R runs the whole sequence R times, interleaved (each ratio is to the same round's
uncaptured run), and adds each configuration's median writes/s: on a small shared machine
one round varies a lot. Figures only, no thresholds: compare rows of the same run.
Runs during which another process had BPF probes attached (``bpftool perf show``: a
capture running elsewhere taxes every run, the uncaptured ones too) are noted below the table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes  # noqa: TID251 - bcc's ring buffer callback hands us a ctypes pointer
import json
import mmap
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PYTHON,
    ROOT,
    Capture,
    ForeignWatch,
    checkouts,
    fmt_int,
    info_counts,
    make_cert,
    parse_summary,
    print_table,
    require_root,
    scratch_dir,
)
from tls_workload import run_workload  # noqa: E402

TAG_RE = rb"client-(\d+) write (\d+)"

MINIMAL = r"""
#include <uapi/linux/ptrace.h>

struct sample { u8 data[SIZE]; };

BPF_HASH(stash, u64, u64, 16384);   /* pid_tgid -> buffer of the SSL_write_ex in progress */
BPF_RINGBUF_OUTPUT(events, PAGES);
BPF_ARRAY(dropped, u64, 1);

int write_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u64 buf = PT_REGS_PARM2(ctx);
    stash.update(&id, &buf);
    return 0;
}

int write_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *buf = stash.lookup(&id);
    if (!buf)
        return 0;
    u64 src = *buf;
    stash.delete(&id);
    if (PT_REGS_RC(ctx) != 1)   /* SSL_write_ex: 1 on success */
        return 0;
    struct sample *s = events.ringbuf_reserve(sizeof(struct sample));
    if (!s) {
        int zero = 0;
        u64 *d = dropped.lookup(&zero);
        if (d)
            __sync_fetch_and_add(d, 1);
        return 0;
    }
    bpf_probe_read_user(s->data, SIZE, (void *)src);
    events.ringbuf_submit(s, 0);
    return 0;
}
"""


def find_libssl3() -> str:
    """Path of libssl.so.3 from the loader's cache (the 64-bit one if there are several)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    found = [line.strip() for line in out.splitlines() if line.strip().startswith("libssl.so.3 ")]
    found.sort(key=lambda line: "64" not in line.partition(" => ")[0])
    if found:
        return found[0].partition(" => ")[2]
    for guess in ("/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib64/libssl.so.3"):
        if Path(guess).exists():
            return guess
    sys.exit("saturation.py: libssl.so.3 not found")


def minimal_child(args: argparse.Namespace) -> None:
    """The minimal program: attach, say so on stderr, drain until SIGINT, print counts."""
    from ecapture.live.bccload import load_bcc

    bcc = load_bcc()
    pages = args.mapsize * 256
    b = bcc.BPF(text=MINIMAL, cflags=[f"-DSIZE={args.size}", f"-DPAGES={pages}"])
    b.attach_uprobe(name=args.libssl, sym="SSL_write_ex", fn_name="write_entry")
    b.attach_uretprobe(name=args.libssl, sym="SSL_write_ex", fn_name="write_return")
    received = [0, 0]  # events, bytes

    def on_sample(_ctx: Any, data: Any, size: int) -> None:
        copy = ctypes.string_at(data, size)
        received[0] += 1
        received[1] += len(copy)

    b["events"].open_ring_buffer(on_sample)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print(f"minimal: 2 probes attached to {args.libssl} (ring buffer, {args.mapsize} MiB)",
          file=sys.stderr, flush=True)
    while not stop:
        b.ring_buffer_poll(100)
    b.ring_buffer_consume()
    dropped = sum(v.value for v in b["dropped"].values())
    b.cleanup()
    print(json.dumps({"events": received[0], "bytes": received[1], "lost": dropped}),
          flush=True)


def raw_tags(recording: Path, clients: int, writes: int) -> int:
    """How many distinct workload tags occur anywhere in the file's bytes."""
    found: set[tuple[int, int]] = set()
    if recording.stat().st_size == 0:
        return 0
    with open(recording, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for m in re.finditer(TAG_RE, mm):
            found.add((int(m[1]), int(m[2])))
    return sum(1 for c, n in found if 1 <= c <= clients and n < writes)


# Run with the checkout as working directory, so that its own ecapture package decodes.
REPLAY_COUNT = r"""
import json, re, sys
from ecapture.testing.replay import replay_events
path, clients, writes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tag = re.compile(TAG_RE)
found = set()
wbytes = events = 0
for ev in replay_events(path):
    data = getattr(ev, "data", None)
    if data is None:
        continue
    events += 1
    if getattr(ev, "direction", None) != "write":
        continue
    wbytes += len(data)
    for m in tag.finditer(data):
        c, n = int(m[1]), int(m[2])
        if 1 <= c <= clients and n < writes:
            found.add((c, n))
print(json.dumps({"tags": len(found), "write_bytes": wbytes, "data_events": events}))
""".replace("TAG_RE", repr(TAG_RE))


def replay_tags(checkout: Path, recording: Path, clients: int, writes: int) -> dict[str, int]:
    r = subprocess.run([PYTHON, "-c", REPLAY_COUNT, str(recording), str(clients), str(writes)],
                       cwd=checkout, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(f"replay in {checkout} failed:\n{r.stderr.strip()}")
    result: dict[str, int] = json.loads(r.stdout)
    return result


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=20000, help="writes per client (20000)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--size", type=int, default=4096, help="bytes per write (4096)")
    ap.add_argument("--ecapture", action="append", metavar="DIR",
                    help="checkout to run `ecapture tls` from (repeatable; default: this tree)")
    ap.add_argument("--mapsize", type=int, metavar="MiB",
                    help="event buffer size for every capture (default: the minimal program "
                         "32, each ecapture its own default)")
    ap.add_argument("-m", "--model", default="text", choices=["text", "json", "keylog", "pcap"],
                    help="ecapture's output model, written to /dev/null (default: text)")
    ap.add_argument("--count", choices=["raw", "replay"], default="raw",
                    help="find tags in the recording's raw bytes, or by replaying it")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration this many times, interleaved (default 1)")
    ap.add_argument("--no-minimal", action="store_true", help="skip the minimal bcc program")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the recordings in DIR")
    ap.add_argument("--minimal-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--libssl", help=argparse.SUPPRESS)
    args = ap.parse_args()
    require_root()
    if args.minimal_child:
        minimal_child(args)
        return
    targets = checkouts(args.ecapture)
    written = args.clients * args.writes * args.size
    total_writes = args.clients * args.writes
    rows: list[list[object]] = []
    rates: dict[str, list[float]] = {}  # run -> writes/s of each round
    notes: list[str] = []
    watch = ForeignWatch()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)

    with scratch_dir("ecap-saturation-") as tmp:
        cert, key = make_cert(tmp)

        def workload(run: str, own: list[int]) -> float:
            watch.check(run + suffix, own)
            result = run_workload(args.clients, args.writes, args.size, cert=cert, key=key)
            watch.check(run + suffix, own)
            rate = float(str(result["writes_per_s"]))
            rates.setdefault(run, []).append(rate)
            return rate

        suffix = ""
        for round_no in range(1, args.rounds + 1):
            suffix = f" #{round_no}" if args.rounds > 1 else ""
            base_rate = workload("uncaptured", [])
            rows.append(["uncaptured" + suffix, f"{base_rate:,.0f}", "1.00", "-", "-", "-", "-",
                         mb(written)])
            print(f"uncaptured{suffix}: {base_rate:,.0f} writes/s", file=sys.stderr)

            if not args.no_minimal:
                mapsize = args.mapsize or 32
                run = f"minimal bcc ({mapsize} MiB)"
                out = tmp / "minimal.json"
                cap = Capture(ROOT, [], stdout_path=str(out), argv=[
                    PYTHON, str(Path(__file__).resolve()), "--minimal-child", "--libssl",
                    find_libssl3(), "--size", str(args.size), "--mapsize", str(mapsize)])
                try:
                    cap.start()
                    rate = workload(run, [cap.pid])
                finally:
                    cap.stop()
                    cap.kill()
                got = json.loads(out.read_text() or "{}")
                rows.append([run + suffix, f"{rate:,.0f}", f"{rate / base_rate:.2f}",
                             fmt_int(got.get("events")), fmt_int(got.get("lost")),
                             f"({fmt_int(got.get('events'))} events)", mb(got.get("bytes", 0)),
                             mb(written)])
                print(f"minimal{suffix}: {rate:,.0f} writes/s, {got}", file=sys.stderr)

            for label, checkout in targets:
                run = f"ecapture {label}"
                rec = (args.keep or tmp) / f"{label}{suffix.replace(' #', '-')}.ecap"
                cmd = ["tls", "--record", str(rec), "-m", args.model,
                       "-k", str(tmp / "keys.log"), "-w", str(tmp / "save.pcapng")]
                if args.mapsize:
                    cmd += ["--mapsize", str(args.mapsize)]
                cap = Capture(checkout, cmd)
                try:
                    cap.start()
                    rate = workload(run, [cap.pid])
                finally:
                    err = cap.stop()
                    cap.kill()
                said = parse_summary(err)
                where = "summary"
                if said.events is None:
                    said, where = info_counts(checkout, rec), "info"
                if "killed after" in err:
                    notes.append(f"{run}{suffix}: did not exit within 300 s of Ctrl-C, killed")
                if args.count == "raw":
                    tags = raw_tags(rec, args.clients, args.writes)
                    recorded = rec.stat().st_size
                else:
                    counted = replay_tags(checkout, rec, args.clients, args.writes)
                    tags, recorded = counted["tags"], counted["write_bytes"]
                rows.append([run + suffix, f"{rate:,.0f}", f"{rate / base_rate:.2f}",
                             fmt_int(said.events), f"{fmt_int(said.lost)} ({where})",
                             f"{tags:,} / {total_writes:,}", mb(recorded), mb(written)])
                print(f"{label}{suffix}: {rate:,.0f} writes/s, {said}", file=sys.stderr)
                if args.keep is None:
                    with contextlib.suppress(FileNotFoundError):
                        rec.unlink()

    if args.rounds > 1:
        base = statistics.median(rates["uncaptured"])
        for run, values in rates.items():
            mid = statistics.median(values)
            rows.append([f"median of {args.rounds}: {run}", f"{mid:,.0f}", f"{mid / base:.2f}",
                         "", "", "", "", ""])
    print(f"\nsaturation: {args.clients} clients x {args.writes:,} SSL writes of {args.size} B "
          f"over loopback; ecapture -m {args.model} to /dev/null, "
          f"map size {args.mapsize or 'default'}")
    recorded_is = ("file size (write + read events, framing)" if args.count == "raw"
                   else "payload of write events (replayed)")
    print_table(["run", "writes/s", "ratio", "events", "lost", "tags found",
                 "recorded MB", "written MB"], rows)
    print(f"tags found: distinct write tags in the recording ({args.count}); "
          f"recorded MB: {recorded_is}; minimal: bytes received")
    for note in notes + watch.notes:
        print(note)


if __name__ == "__main__":
    main()

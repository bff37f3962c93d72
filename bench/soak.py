"""Soak: `ecapture tls --record` under a steady, paced TLS workload for minutes; does its
memory stay put, does it lose events?

usage: python bench/soak.py [--minutes 10] [--rate 10000] [--size 512] [--interval 10]
                            [--warmup 60] [--ecapture DIR] [-m MODEL]

Root + bcc. Starts `ecapture tls --record FILE -m MODEL` of the checkout (default: the
current tree; stdout to /dev/null), then the workload of bench/tls_workload.py: 2 clients
writing --size byte records to one server, paced at --rate / 2 writes per second in all, so
that with the server's reads the capture sees about --rate events per second, for --minutes.
Every --interval seconds it samples the capture process: VmRSS from /proc/PID/status, its
CPU use since the last sample (/proc/PID/stat), and the recording's size. Prints the series;
then the events and lost events from the capture's exit summary (or `ecapture info`), the
workload's achieved rate, and RSS after warm-up (the first sample at or after --warmup
seconds, at most a quarter of the run) against the rest: the largest deviation from it and
whether every later sample stayed within 10% of it. The recording is deleted at the end.
Smoke run: --minutes 1. Figures only.
Runs during which another process had BPF probes attached (``bpftool perf show``: a
capture running elsewhere taxes every run, the uncaptured ones too) are noted below the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Capture,
    ForeignWatch,
    checkouts,
    fmt_int,
    info_counts,
    make_cert,
    parse_summary,
    print_table,
    require_root,
    rss_kib,
    scratch_dir,
)
from tls_workload import run_workload  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the workload")
    ap.add_argument("--rate", type=float, default=10000.0,
                    help="events per second to aim for (writes + the server's reads)")
    ap.add_argument("--size", type=int, default=512, help="bytes per write (512)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds after which RSS is taken as the reference")
    ap.add_argument("--ecapture", metavar="DIR", help="checkout to run (default: this tree)")
    ap.add_argument("-m", "--model", default="text", choices=["text", "json", "keylog", "pcap"],
                    help="ecapture's output model, written to /dev/null (default: text)")
    args = ap.parse_args()
    require_root()
    (label, checkout), = checkouts([args.ecapture] if args.ecapture else None)
    seconds = args.minutes * 60
    warmup = min(args.warmup, seconds / 4)

    with scratch_dir("ecap-soak-") as tmp:
        cert, key = make_cert(tmp)
        rec = tmp / "soak.ecap"
        cap = Capture(checkout, ["tls", "--record", str(rec), "-m", args.model,
                                 "-k", str(tmp / "keys.log"), "-w", str(tmp / "save.pcapng")])
        samples: list[tuple[float, int, float | None, int]] = []  # t, rss KiB, cpu %, rec B
        result: dict[str, Any] = {}
        failure: list[BaseException] = []

        def workload() -> None:
            try:
                result.update(run_workload(2, 0, args.size, rate=args.rate / 2,
                                           seconds=seconds, cert=cert, key=key))
            except BaseException as e:  # reported after the capture is stopped
                failure.append(e)

        watch = ForeignWatch()
        try:
            cap.start()
            watch.check("soak", [cap.pid])
            runner = threading.Thread(target=workload)
            started = time.monotonic()
            last_cpu, last_t = cpu_seconds(cap.pid), started
            runner.start()
            next_at = started
            while True:
                now = time.monotonic()
                rss = rss_kib(cap.pid)
                cpu = cpu_seconds(cap.pid)
                if rss is None or cpu is None:
                    break  # the capture died; its stderr says why
                pct = (100 * (cpu - last_cpu) / (now - last_t)
                       if last_cpu is not None and now - last_t > 0.5 else None)
                last_cpu, last_t = cpu, now
                size = rec.stat().st_size if rec.exists() else 0
                samples.append((now - started, rss, pct, size))
                if not runner.is_alive():
                    break
                next_at += args.interval
                runner.join(max(0.0, next_at - time.monotonic()))
            runner.join()
            watch.check("soak", [cap.pid])
        finally:
            err = cap.stop()
            cap.kill()
        said, where = parse_summary(err), "summary"
        if said.events is None and rec.exists():
            said, where = info_counts(checkout, rec), "info"
    if failure:
        raise SystemExit(f"soak.py: the workload failed: {failure[0]}")

    ref_i = next((i for i, s in enumerate(samples) if s[0] >= warmup), 0)
    ref = samples[ref_i][1] if samples else 0
    print(f"\nsoak: ecapture {label} tls --record -m {args.model}, {args.minutes:g} min at "
          f"{args.rate:,.0f} events/s aimed ({args.rate / 2:,.0f} writes/s of {args.size} B "
          f"+ the server's reads), RSS every {args.interval:g} s")
    print_table(["t (s)", "RSS MiB", "vs ref", "CPU %", "recording MB"],
                [[f"{t:.0f}", f"{rss / 1024:.1f}",
                  ("ref" if i == ref_i else f"{100 * (rss - ref) / ref:+.1f}%") if ref else "-",
                  "-" if pct is None else f"{pct:.0f}", f"{size / 1e6:,.0f}"]
                 for i, (t, rss, pct, size) in enumerate(samples)])
    after = [s[1] for s in samples[ref_i:]]
    worst = max((abs(r - ref) for r in after), default=0)
    took = float(result.get("seconds", 0)) or 1.0
    print(f"workload: {result.get('writes', 0):,} writes in {took:.0f} s "
          f"({result.get('writes', 0) / took:,.0f} writes/s), "
          f"server read {result.get('server_reads', 0):,} times")
    if said.events is not None:
        print(f"capture: {fmt_int(said.events)} events ({said.events / took:,.0f}/s over the "
              f"workload), {fmt_int(said.lost)} lost (from its {where})")
    else:
        print(f"capture: no summary; its stderr:\n{err.strip()}")
    if ref:
        print(f"RSS: {ref / 1024:.1f} MiB after warm-up (t={samples[ref_i][0]:.0f} s), "
              f"min {min(after) / 1024:.1f}, max {max(after) / 1024:.1f}, largest deviation "
              f"{100 * worst / ref:.1f}%: {'within' if worst <= ref / 10 else 'NOT within'} "
              f"10% of it")
    for note in watch.notes:
        print(note)


if __name__ == "__main__":
    main()

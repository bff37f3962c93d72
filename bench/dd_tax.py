"""The dd tax: how much a running `ecapture tls` slows a process that does nothing but
tiny reads and writes (no TLS at all), for each checkout, in the same run.

usage: python bench/dd_tax.py [--count 2000000] [--rounds 3] [--ecapture DIR]...

Root + bcc. Runs ``dd if=/dev/zero of=/dev/null bs=1 count=N`` (2,000,000 one-byte reads
and as many writes) uncaptured, then while `ecapture tls` of each checkout given with
--ecapture runs (repeatable; default: the current tree; stdout to /dev/null, no recording),
then uncaptured again. Each is the best of --rounds runs, timed by dd itself (its "copied,
S s" figure, so process start-up is not counted). Prints MB/s and the ratio to the
uncaptured figure (the better of the two uncaptured series). Figures only, no thresholds.
Runs during which another process had BPF probes attached (``bpftool perf show``: a
capture running elsewhere taxes every run, the uncaptured ones too) are noted below the table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ForeignWatch, capture, checkouts, print_table, require_root  # noqa: E402

COPIED = re.compile(r"^(\d+) bytes .*copied, ([\d.]+) s", re.M)


def dd_once(count: int) -> tuple[int, float]:
    """Bytes copied and dd's own seconds."""
    r = subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}"],
                       capture_output=True, text=True, check=True, env={"LC_ALL": "C"})
    m = COPIED.search(r.stderr)
    if not m:
        raise RuntimeError(f"unexpected dd output: {r.stderr!r}")
    return int(m[1]), float(m[2])


def best_mb_s(count: int, rounds: int, watch: ForeignWatch, run: str,
              own: list[int]) -> tuple[float, list[float]]:
    watch.check(run, own)
    rates = []
    for _ in range(rounds):
        nbytes, seconds = dd_once(count)
        rates.append(nbytes / seconds / 1e6)
    watch.check(run, own)
    return max(rates), rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2_000_000, help="dd count (bs=1)")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many dd runs")
    ap.add_argument("--ecapture", action="append", metavar="DIR",
                    help="checkout to run `ecapture tls` from (repeatable; default: this tree)")
    args = ap.parse_args()
    require_root()
    targets = checkouts(args.ecapture)

    watch = ForeignWatch()
    results: list[tuple[str, float, list[float]]] = []
    before, runs = best_mb_s(args.count, args.rounds, watch, "uncaptured", [])
    results.append(("uncaptured", before, runs))
    for label, checkout in targets:
        with capture(checkout, ["tls"]) as cap:
            best, runs = best_mb_s(args.count, args.rounds, watch, f"ecapture {label}",
                                   [cap.pid])
        results.append((f"ecapture {label}", best, runs))
    after, runs = best_mb_s(args.count, args.rounds, watch, "uncaptured (again)", [])
    results.append(("uncaptured (again)", after, runs))
    base = max(before, after)

    print(f"\ndd tax: dd if=/dev/zero of=/dev/null bs=1 count={args.count:,}, "
          f"best of {args.rounds}")
    print_table(["run", "MB/s", "ratio", "all rounds (MB/s)"],
                [[name, f"{best:.2f}", f"{best / base:.2f}",
                  " ".join(f"{r:.2f}" for r in runs)] for name, best, runs in results])
    for note in watch.notes:
        print(note)


if __name__ == "__main__":
    main()

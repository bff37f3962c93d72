"""The dd tax: how much a running `ecapture tls` slows a process that does nothing but
tiny reads and writes (no TLS at all), for each checkout, in the same run.

usage: python bench/dd_tax.py [--count 2000000] [--rounds 5] [--ecapture DIR]...

Root + bcc. Runs ``dd if=/dev/zero of=/dev/null bs=1 count=N`` (2,000,000 one-byte reads
and as many writes) uncaptured and while `ecapture tls` of each checkout given with
--ecapture runs (repeatable; default: the current tree; stdout to /dev/null, no recording),
timed by dd itself (its "copied, S s" figure, so process start-up is not counted). The
runs are interleaved: each round runs dd once uncaptured and once under a freshly started
capture of each checkout, so that the machine's drift over the minutes of the run weighs
on every column alike. Prints the median and the best MB/s of --rounds rounds, and each
one's ratio to the uncaptured figure of the same kind. Figures only, no thresholds.
Runs during which another process had BPF probes attached (``bpftool perf show``: a
capture running elsewhere taxes every run, the uncaptured ones too) are noted below the table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from statistics import median

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


def timed(count: int, watch: ForeignWatch, run: str, own: list[int]) -> float:
    """MB/s of one dd run."""
    watch.check(run, own)
    nbytes, seconds = dd_once(count)
    watch.check(run, own)
    return nbytes / seconds / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2_000_000, help="dd count (bs=1)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of dd runs (5)")
    ap.add_argument("--ecapture", action="append", metavar="DIR",
                    help="checkout to run `ecapture tls` from (repeatable; default: this tree)")
    args = ap.parse_args()
    require_root()
    targets = checkouts(args.ecapture)

    watch = ForeignWatch()
    runs: dict[str, list[float]] = {"uncaptured": []}
    for _ in range(args.rounds):
        runs["uncaptured"].append(timed(args.count, watch, "uncaptured", []))
        for label, checkout in targets:
            with capture(checkout, ["tls"]) as cap:
                rate = timed(args.count, watch, f"ecapture {label}", [cap.pid])
            runs.setdefault(f"ecapture {label}", []).append(rate)
    base = runs["uncaptured"]

    print(f"\ndd tax: dd if=/dev/zero of=/dev/null bs=1 count={args.count:,}, "
          f"{args.rounds} interleaved rounds")
    print_table(["run", "median MB/s", "ratio", "best MB/s", "ratio", "all rounds (MB/s)"],
                [[name, f"{median(r):.2f}", f"{median(r) / median(base):.2f}",
                  f"{max(r):.2f}", f"{max(r) / max(base):.2f}",
                  " ".join(f"{x:.2f}" for x in r)] for name, r in runs.items()])
    for note in watch.notes:
        print(note)


if __name__ == "__main__":
    main()

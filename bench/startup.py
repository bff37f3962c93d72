"""Start-up: time from launching `ecapture tls` to its "probes attached" line, for the shared
libssl and for a large binary that links OpenSSL statically, for each checkout.

usage: python bench/startup.py [--runs 5] [--ecapture DIR]... [--big PATH] [--no-breakdown]
                               [--module NAME]...

Root + bcc. For each checkout given with --ecapture (repeatable; default: the current tree)
and each target, --runs launches of ``python -m ecapture tls [--libssl BIG]`` (stdout to
/dev/null), each stopped with Ctrl-C as soon as its "probes attached" line is read; the
time is from Popen to that line arriving on our end of its stderr pipe (monotonic clock).
Prints the median, min and max per checkout and target, side by side.

--module NAME (repeatable) adds a row for another module with its defaults (gnutls, nss,
boringssl, ...), e.g. to compare the TLS libraries' start-up side by side.

BIG defaults to /usr/bin/node when it links OpenSSL statically (ldd shows no libssl and it
exports SSL_write_ex); otherwise pass --big PATH, or the big rows are skipped with a note.

Then, unless --no-breakdown, where the time goes for the current tree (one more launch per
target): the same CLI run in-process under a small driver that times interpreter start-up,
``import ecapture.cli`` and a few functions of the live layer (session init and start, the
module's init, ELF reads, bcc's compile-and-load and attach calls, metadata), and with
``python -X importtime`` on, whose slowest top-level imports are listed. Figures only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PYTHON,
    ROOT,
    Capture,
    checkouts,
    median,
    print_table,
    require_root,
    scratch_dir,
)

# Run in the current tree: wraps functions of the live layer with timers, runs the CLI,
# prints {"t0":..., "cli_imported":..., "phases": [[name, seconds, calls, first], ...]}.
DRIVER = r"""
import functools, importlib, json, sys, time
t0 = time.monotonic()
import ecapture.cli as cli
imported = time.monotonic()
timings = {}

def wrap(owner, attr, name):
    fn = getattr(owner, attr, None)
    if fn is None or getattr(fn, "_bench_wrapped", False):
        return
    @functools.wraps(fn)
    def timed(*a, **k):
        start = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            t = timings.setdefault(name, [0.0, 0, start])
            t[0] += time.monotonic() - start
            t[1] += 1
    timed._bench_wrapped = True
    setattr(owner, attr, timed)

def resolve(dotted):
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:-1]:
            obj = getattr(obj, p, None)
        return obj, parts[-1]
    return None, parts[-1]

def wrap_bcc(bcc):
    for attr in ("__init__", "attach_uprobe", "attach_uretprobe", "attach_tracepoint"):
        wrap(bcc.BPF, attr, "bcc.BPF." + attr)

for dotted in PHASES:
    owner, attr = resolve(dotted)
    if owner is not None:
        wrap(owner, attr, dotted)
import ecapture.live.session as session
real_load = session.load_bcc
def load_bcc():
    start = time.monotonic()
    bcc = real_load()
    wrap_bcc(bcc)
    t = timings.setdefault("ecapture.live.session.load_bcc", [0.0, 0, start])
    t[0] += time.monotonic() - start
    t[1] += 1
    return bcc
session.load_bcc = load_bcc
try:
    rc = cli.main(sys.argv[1:])
finally:
    phases = sorted(([k, *v] for k, v in timings.items()), key=lambda p: p[3])
    print(json.dumps({"t0": t0, "cli_imported": imported, "phases": phases}), flush=True)
sys.exit(rc)
"""

# (dotted name, label, indent): what the driver times, as nested in a typical start-up.
PHASES = [
    ("ecapture.live.session.LiveSession.init", "session.init (checks, module init, features)", 0),
    ("ecapture.live.session.load_bcc", "import bcc", 1),
    ("ecapture.modules.openssl.OpenSSLModule.init", "module init (find libssl, version)", 1),
    ("ecapture.targets.scan_version", "scan the file for the version string", 2),
    ("ecapture.targets._elf_info", "read ELF symbols, build id (all calls)", 2),
    ("ecapture.live.session.LiveSession.detect_features", "detect kernel features", 1),
    ("ecapture.live.session.LiveSession.start", "session.start (compile, load, attach)", 0),
    ("bcc.BPF.__init__", "bcc compile + load + tracepoints", 1),
    ("bcc.BPF.attach_uprobe", "bcc attach_uprobe", 1),
    ("bcc.BPF.attach_uretprobe", "bcc attach_uretprobe", 1),
    ("bcc.BPF.attach_tracepoint", "bcc attach_tracepoint", 1),
    ("ecapture.metadata.build_metadata", "build metadata", 0),
]
# bcc's methods are wrapped once bcc is loaded, load_bcc by the driver itself.
DRIVER = DRIVER.replace("PHASES", repr([p[0] for p in PHASES if not p[0].startswith("bcc.")
                                        and not p[0].endswith(".load_bcc")]))

IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def static_openssl(path: str) -> tuple[bool, str]:
    """Whether ``path`` carries OpenSSL itself, and what ldd / nm said."""
    if not Path(path).exists():
        return False, f"{path} does not exist"
    ldd = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    linked = [line.strip() for line in ldd.splitlines() if "libssl" in line]
    if linked:
        return False, f"{path} links libssl dynamically ({linked[0]})"
    nm = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True,
                        text=True).stdout
    if not re.search(r" T SSL_write_ex$", nm, re.M):
        return False, f"{path} does not link libssl and exports no SSL_write_ex"
    size = Path(path).stat().st_size / 1e6
    return True, f"{path}: {size:.0f} MB, no libssl in ldd, exports SSL_write_ex"


def time_startup(checkout: Path, args: list[str]) -> float:
    cap = Capture(checkout, args)
    try:
        return cap.start(timeout=300)
    finally:
        cap.stop()
        cap.kill()


def breakdown(args: list[str], tmp: Path) -> tuple[float, dict[str, object], list[str]]:
    out = tmp / "driver.json"
    cap = Capture(ROOT, [], stdout_path=str(out),
                  argv=[PYTHON, "-X", "importtime", "-c", DRIVER, *args])
    try:
        took = cap.start(timeout=300)
    finally:
        err = cap.stop()
        cap.kill()
    lines = out.read_text().strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    report["launched"] = cap.launched
    report["attached"] = cap.attached_at
    return took, report, err.splitlines()


def print_breakdown(title: str, took: float, report: dict[str, object],
                    err: list[str]) -> None:
    launched = float(report["launched"])  # type: ignore[arg-type]
    t0 = float(report["t0"])  # type: ignore[arg-type]
    imported = float(report["cli_imported"])  # type: ignore[arg-type]
    rows: list[list[object]] = [
        ["interpreter start-up (launch to driver's first line)", f"{t0 - launched:.2f}", "", ""],
        ["import ecapture.cli", f"{imported - t0:.2f}", "", ""],
    ]
    phases = {p[0]: p for p in report.get("phases", [])}  # type: ignore[attr-defined]
    for dotted, label, indent in PHASES:
        if dotted in phases:
            _, seconds, calls, first = phases[dotted]
            rows.append(["  " * indent + label, f"{seconds:.2f}", str(calls),
                         f"{first - launched:.2f}"])
    rows.append(["launch to \"probes attached\" (this run)", f"{took:.2f}", "", ""])
    print(f"\nwhere the time goes, current tree, {title} (one run, -X importtime on)")
    print_table(["phase", "seconds", "calls", "starts at"], rows)
    imports = []
    for line in err:
        m = IMPORTTIME.match(line)
        if m and not m[3]:
            imports.append((int(m[2]) / 1e6, m[4]))
    imports.sort(reverse=True)
    if imports:
        print("slowest top-level imports (cumulative seconds): "
              + ", ".join(f"{name} {s:.2f}" for s, name in imports[:8]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="launches per checkout and target")
    ap.add_argument("--ecapture", action="append", metavar="DIR",
                    help="checkout to run `ecapture tls` from (repeatable; default: this tree)")
    ap.add_argument("--big", default="/usr/bin/node",
                    help="a large binary linking OpenSSL statically (default: /usr/bin/node)")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the where-the-time-goes runs of the current tree")
    ap.add_argument("--module", action="append", default=[], metavar="NAME",
                    help="also time `ecapture NAME` (repeatable)")
    args = ap.parse_args()
    require_root()
    targets = checkouts(args.ecapture)
    big_ok, big_said = static_openssl(args.big)
    print(f"big binary: {big_said}", file=sys.stderr)
    cases = [("shared libssl", ["tls"])]
    if big_ok:
        cases.append((f"--libssl {args.big}", ["tls", "--libssl", args.big]))
    cases += [(f"ecapture {name}", [name]) for name in args.module]

    times: dict[tuple[str, str], list[float]] = {}
    for case, cmd in cases:
        for label, checkout in targets:
            for i in range(args.runs):
                took = time_startup(checkout, cmd)
                times.setdefault((case, label), []).append(took)
                print(f"{case} {label} run {i + 1}: {took:.2f} s", file=sys.stderr)

    print(f"\nstart-up: launch to \"probes attached\", median of {args.runs} "
          "(min-max), seconds")
    headers = ["target", *[label for label, _ in targets]]
    rows = [[case, *[f"{median(times[case, label]):.2f} ({min(times[case, label]):.2f}-"
                     f"{max(times[case, label]):.2f})" for label, _ in targets]]
            for case, _ in cases]
    print_table(headers, rows)
    print(f"big binary: {big_said}")

    if not args.no_breakdown:
        with scratch_dir("ecap-startup-") as tmp:
            for case, cmd in cases:
                took, report, err = breakdown(cmd, tmp)
                print_breakdown(case, took, report, err)


if __name__ == "__main__":
    main()

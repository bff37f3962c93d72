"""Containers: start-up with many copies of libssl in use; exec to first event in a new one.

How `ecapture tls` copes with containers, whose libraries are files of their own: its
start-up with many distinct copies of libssl in use, and how soon a client started in a new
container during the capture is captured.

usage: python bench/containers.py [--runs N] [--copies 50] [--ecapture DIR]...
                                  [--only {startup,latency}] [--keep DIR]

Root + bcc + util-linux (unshare, nsenter), curl and the openssl CLI. The "containers" are
those of ecapture.testing.containers: a private mount namespace with copies of libssl.so.3
and libcrypto.so.3 bind-mounted over the system paths, so each is another file (inode) to
attach to; the network is the host's. A host ``openssl s_server -www`` on 127.0.0.1 runs
throughout: it maps the host's libssl, and it is the server the clients talk to.

Start-up (--runs, default 3): the time from launching ``python -m ecapture tls`` (stdout to
/dev/null) to its "probes attached" line, as bench/startup.py measures it, (i) with only the
host's processes (one libssl file in use: the server's), then (ii) with --copies containers
(default 50) each running a long-lived ``python3 -c 'import ssl; ...'``, which maps the
container's copy. Before (ii) the bench checks in /proc that each copy is mapped and a file
of its own. Prints median, min and max of (i) and (ii) and their ratio (the aim: under 2),
from each run's stderr how many files the capture said it attached, so that the figure is
of a capture that did attach to every copy (other processes of the machine may map more),
and how long it took to exit after Ctrl-C (each uprobe's removal waits for the kernel).

Latency (--runs, default 5): one capture per checkout, ``python -m ecapture tls -m json
--record FILE``, and, while it runs, one ``curl -sk https://127.0.0.1:PORT/`` per run in
(1) a container made for that run (a new copy: the capture must attach to it while curl
runs) and (2) a container made once and warmed up by one curl before the runs (its copy is
attached already). After the capture stops, the recording is read: the kernel time of curl's
exec (the "process" fact with exec set), the "attached" fact of the container's copy (its
mount namespace, during the run: it may name curl or an earlier process of the container;
the time its attach ended), the kernel time of the pid's first TLS read or write
(``ecapture replay --raw -m json``), and whether its "GET /" was captured; for scale, the
times of curl's connect() (a syscall probe, there whatever the library) and of the host
server's read of the request (its libssl is attached from the start): the attach has until
then. Prints each run and the medians per case and checkout.

--ecapture DIR (repeatable) runs each part for each checkout side by side; the recordings
are read by the checkout that made them. Every container and process started is stopped on
exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (  # noqa: E402
    ATTACHED,
    PYTHON,
    Capture,
    checkouts,
    make_cert,
    median,
    print_table,
    require_root,
    scratch_dir,
)

from ecapture.testing.containers import Container, container, missing_tools  # noqa: E402

LIBSSL = "libssl.so.3"
# The system's python: a venv's interpreter on PATH may be a wrapper; this one imports the
# ssl module, whose extension maps libssl.so.3 from the system path (inside: the copy).
HOLDER = [shutil.which("python3", path="/usr/bin:/bin") or "python3", "-c",
          "import ssl, time; time.sleep(1e6)"]
# "ecapture: tls: 60 probes attached to 4 files (...)" or "... attached to /path (...)"
FILES_RE = re.compile(r"probes attached to (?:(\d+) files|/)")
# One line per file after it: "ecapture: attached PATH (VERSION; WHERE)"
FILE_LINE_RE = re.compile(r"^ecapture: attached \S+ \(", re.M)
NOT_FILE_RE = re.compile(r"NOT ATTACHED|not attached to")
# "NOT LOOKED AT: 3 processes (the last: ...)": execs the capture had no time to look at
NOT_LOOKED_RE = re.compile(r"NOT LOOKED AT: (\d+) process")
# Run in a checkout: the exec facts of a recording, one JSON object per line.
EXEC_FACTS = r"""
import json, sys
from ecapture.record import Fact
from ecapture.record.reader import Reader
with Reader(sys.argv[1]) as r:
    for item in r:
        if isinstance(item, Fact) and item.what == "process" and item.fields.get("exec"):
            print(json.dumps(item.fields))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tls_server(tmp: Path) -> Iterator[tuple[int, int]]:
    """A host `openssl s_server -www` on a free port of 127.0.0.1, stopped after the block:
    (port, pid)."""
    cert, key = make_cert(tmp)
    port = free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key",
         str(key), "-www", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("openssl s_server did not start")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


def mapped_library(pid: int, name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``name`` as mapped by ``pid``, None if it maps no such file."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[5].endswith("/" + name):
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            return os.makedev(major, minor), int(parts[4])
    return None


def wait_mapped(pid: int, name: str, timeout: float = 15.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while (found := mapped_library(pid, name)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} did not map {name} in {timeout:.0f} s")
        time.sleep(0.02)
    return found


# -- start-up ------------------------------------------------------------------------------


@dataclass
class StartRun:
    seconds: float  # launch to "probes attached"
    stop: float  # Ctrl-C to exit
    files: int | None  # what the "probes attached" line says
    file_lines: int  # "attached PATH (...)" lines that follow it
    not_attached: int  # lines that say a file was not attached
    not_looked: int  # processes whose mappings the capture said it did not read
    said: list[str]  # those lines, and the "probes attached" one


def time_startup(checkout: Path) -> StartRun:
    cap = Capture(checkout, ["tls"])
    try:
        took = cap.start(timeout=300)
    finally:
        stopping = time.monotonic()
        err = cap.stop()
        stop = time.monotonic() - stopping
        cap.kill()
    m = FILES_RE.search(err)
    files = None if m is None else int(m[1]) if m[1] else 1
    said = [line for line in err.splitlines() if "attached" in line or "NOT LOOKED" in line]
    looked = sum(int(n[1]) for n in NOT_LOOKED_RE.finditer(err))
    return StartRun(took, stop, files, len(FILE_LINE_RE.findall(err)),
                    sum(1 for line in said if NOT_FILE_RE.search(line)), looked, said)


def startup_runs(targets: list[tuple[str, Path]], runs: int, case: str, expected: int,
                 results: dict[tuple[str, str], list[StartRun]]) -> None:
    for label, checkout in targets:
        for i in range(runs):
            r = time_startup(checkout)
            results.setdefault((case, label), []).append(r)
            print(f"start-up {case} {label} run {i + 1}: {r.seconds:.2f} s (stop "
                  f"{r.stop:.1f} s), {r.files} files said, {r.file_lines} attached lines, "
                  f"{r.not_attached} not attached, {r.not_looked} processes not looked at",
                  file=sys.stderr)
            if r.files != expected or r.not_attached or r.not_looked:
                # Not the files in use: show what it said, for whoever reads the figure.
                print("  " + "\n  ".join(r.said), file=sys.stderr)


def holders(stack: contextlib.ExitStack, tmp: Path, copies: int) -> set[tuple[int, int]]:
    """``copies`` containers, each with a process mapping its copy; the files they map."""
    files: set[tuple[int, int]] = set()
    for i in range(copies):
        box = stack.enter_context(container(tmp / f"holder-{i}"))
        proc = box.popen(HOLDER, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        pid = box.host_pid(proc)
        seen = wait_mapped(pid, LIBSSL)
        if seen != box.library_inode(LIBSSL):
            raise RuntimeError(f"holder {i} (pid {pid}) maps another {LIBSSL} than its copy")
        files.add(seen)
    return files


def startup(targets: list[tuple[str, Path]], args: argparse.Namespace, tmp: Path,
            host_files: set[tuple[int, int]]) -> None:
    runs = args.runs or 3
    results: dict[tuple[str, str], list[StartRun]] = {}
    one = f"host only ({len(host_files)} file)"
    startup_runs(targets, runs, one, len(host_files), results)
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        files = holders(stack, tmp, args.copies) | host_files
        print(f"{args.copies} containers up in {time.monotonic() - began:.1f} s; distinct "
              f"{LIBSSL} files mapped: {len(files)}", file=sys.stderr)
        many = f"{args.copies} containers ({len(files)} files)"
        startup_runs(targets, runs, many, len(files), results)

    print(f"\nstart-up: launch to \"{ATTACHED}\", median of {runs} (min-max), seconds; "
          "files: what the capture said it attached (\"attached\" lines); stop: Ctrl-C to "
          "exit, median seconds")
    rows = []
    for label, _ in targets:
        cells: list[object] = [label]
        meds = []
        for case in (one, many):
            rs = results[case, label]
            secs = [r.seconds for r in rs]
            meds.append(median(secs))
            said = sorted({f"{r.files}" for r in rs})
            lines = sorted({f"{r.file_lines}" for r in rs})
            files_cell = f"{'/'.join(said)} ({'/'.join(lines)})"
            if refused := max(r.not_attached for r in rs):
                files_cell += f", {refused} not attached"
            if skipped := max(r.not_looked for r in rs):
                files_cell += f", {skipped} not looked at"
            cells += [f"{meds[-1]:.2f} ({min(secs):.2f}-{max(secs):.2f})", files_cell,
                      f"{median([r.stop for r in rs]):.1f}"]
        cells.append(f"{meds[1] / meds[0]:.2f}x")
        rows.append(cells)
    print_table(["checkout", one, "files", "stop", many, "files", "stop", "ratio"], rows)
    if args.copies + 1 > 64:
        print("note: more files than --max-libraries' default (64): the capture stops there")


# -- exec to first event ---------------------------------------------------------------------


@dataclass
class Client:
    case: str
    run: int
    pid: int
    mntns: int
    # The run's window on the kernel's clock (CLOCK_MONOTONIC, as time.monotonic_ns): from
    # before its container was made (a new copy) or curl started, to after the settling.
    since_ns: int
    until_ns: int


@dataclass
class Measured:
    client: Client
    exec_ns: int | None
    attached_ns: int | None  # when the attach to the container's copy ended
    after_ms: float | None  # as the "attached" fact says, after the process it names
    by: str  # that process, when it is not curl
    refused: str | None
    first_ns: int | None
    captured: bool
    connect_ns: int | None  # curl's connect(), from the syscall probes (no libssl needed)
    served_ns: int | None  # the host server's read of curl's "GET /": when it was sent

    def since_exec(self, ns: int | None) -> float | None:
        return None if ns is None or self.exec_ns is None else (ns - self.exec_ns) / 1e6


def curl(box: Container, port: int, case: str, run: int, since_ns: int | None = None
         ) -> Client:
    since_ns = since_ns or time.monotonic_ns()
    # Without a pid namespace nsenter execs curl itself: its pid is the one the kernel sees.
    proc = box.popen(["curl", "-sk", "-o", "/dev/null", f"https://127.0.0.1:{port}/"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    proc.wait(timeout=30)
    if proc.returncode != 0:
        print(f"curl in {case} run {run} exited with {proc.returncode}", file=sys.stderr)
    # What the capture does after an exec (reading the new process's mappings) lasts a
    # quarter second at most; the next client waits for it to be over.
    time.sleep(0.5)
    return Client(case, run, proc.pid, box.mntns, since_ns, time.monotonic_ns())


def recorded(checkout: Path, recording: Path) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
    """(exec facts, replay's json objects) of a recording, read by the checkout that made it."""
    facts = subprocess.run([PYTHON, "-c", EXEC_FACTS, str(recording)], cwd=checkout,
                           capture_output=True, text=True, timeout=300)
    if facts.returncode != 0:
        print(f"reading exec facts failed: {facts.stderr.strip()}", file=sys.stderr)
    replay = subprocess.run([PYTHON, "-m", "ecapture", "replay", str(recording), "-m", "json",
                             "--raw"], cwd=checkout, capture_output=True, text=True,
                            timeout=300)
    if replay.returncode != 0:
        print(f"replay exited with {replay.returncode}: {replay.stderr.strip()}",
              file=sys.stderr)

    def objects(text: str) -> list[dict[str, Any]]:
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    return objects(facts.stdout), objects(replay.stdout)


def measure(client: Client, execs: list[dict[str, Any]], objs: list[dict[str, Any]]
            ) -> Measured:
    mine = [f for f in execs if int(f.get("pid", -1)) == client.pid]
    # nsenter's exec comes first, then curl's, in the same pid.
    curls = [f for f in mine if f.get("comm") == "curl"] or mine
    exec_ns = int(curls[-1]["ts_ns"]) if curls else None
    # The attach to the container's copy may be credited to any process of the container
    # that mapped or reached it first (its shell, say): found by mount namespace and time.
    attached = [o for o in objs if o.get("type") == "attached"
                and o.get("mntns") == client.mntns
                and client.since_ns <= int(o["ts_ns"]) <= client.until_ns]
    data = [o for o in objs if o.get("type") == "data" and o.get("pid") == client.pid]
    first = min((int(o["ts_ns"]) for o in data), default=None)
    captured = any(o.get("direction") == "write" and str(o.get("data", "")).startswith("GET /")
                   for o in data)
    after = refused = attached_ns = None
    by = ""
    if attached:
        attached_ns = int(attached[0]["ts_ns"])
        after = float(attached[0]["after_ms"])
        refused = attached[0].get("refused")
        if attached[0].get("pid") != client.pid:
            by = f"{attached[0].get('comm')} pid {attached[0].get('pid')}"
    connects = [o for o in objs if o.get("type") == "conn" and o.get("pid") == client.pid
                and o.get("event") == "connect"]
    connect_ns = int(connects[0]["ts_ns"]) if connects else None
    local = connects[0].get("local") if connects else None
    # The server's libssl is the host's, attached from the start: its read of the request
    # says when curl sent it, whether or not curl's own write was captured.
    served = [int(o["ts_ns"]) for o in objs if local and o.get("type") == "data"
              and o.get("direction") == "read" and o.get("remote") == local
              and str(o.get("data", "")).startswith("GET /")]
    return Measured(client, exec_ns, attached_ns, after, by, refused, first, captured,
                    connect_ns, min(served, default=None))


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def latency_one(label: str, checkout: Path, runs: int, port: int, tmp: Path,
                keep: Path | None) -> list[Measured]:
    recording = tmp / f"{label}.ecap"
    cap = Capture(checkout, ["tls", "-m", "json", "--record", str(recording)],
                  stdout_path=str(tmp / f"{label}.json"))
    clients: list[Client] = []
    try:
        cap.start(timeout=300)
        with container(tmp / f"{label}-reused", pid_ns=False) as reused:
            curl(reused, port, "warm-up", 0)  # attaches the reused container's copy
            for i in range(1, runs + 1):
                since = time.monotonic_ns()
                with container(tmp / f"{label}-new-{i}", pid_ns=False) as fresh:
                    clients.append(curl(fresh, port, "new copy", i, since))
                clients.append(curl(reused, port, "attached copy", i))
    finally:
        err = cap.stop()
        cap.kill()
    for line in err.splitlines():
        if "ATTACHED" in line or "NOT LOOKED AT" in line:
            print(f"{label}: {line.strip()}", file=sys.stderr)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(recording, keep / recording.name)
        print(f"{label}: recording kept in {keep / recording.name}", file=sys.stderr)
    execs, objs = recorded(checkout, recording)
    return [measure(c, execs, objs) for c in clients]


def latency(targets: list[tuple[str, Path]], args: argparse.Namespace, tmp: Path,
            port: int) -> None:
    runs = args.runs or 5
    per: dict[str, list[Measured]] = {}
    for label, checkout in targets:
        per[label] = latency_one(label, checkout, runs, port, tmp, args.keep)
        rows = []
        for m in per[label]:
            notes = []
            if m.by:
                notes.append(f"attach credited to {m.by}, {ms(m.after_ms)} ms after its exec")
            if m.refused:
                notes.append(f"refused: {m.refused}")
            note = "; ".join(notes)
            rows.append([f"{m.client.case} {m.client.run}", m.client.pid,
                         ms(m.since_exec(m.attached_ns)),
                         ms(m.since_exec(m.connect_ns)), ms(m.since_exec(m.served_ns)),
                         ms(m.since_exec(m.first_ns)), "yes" if m.captured else "no", note])
        print(f"\nexec to first event, {label}: one curl per run, ms after curl's exec")
        print_table(["run", "pid", "attached", "connect", "server got GET", "first event",
                     "GET captured", "note"], rows,
                    right=[False, True, True, True, True, True, True, False])

    print(f"\nexec to first event: medians of {runs} runs, ms after curl's exec (kernel "
          "clock); attached: when the attach to the container's copy ended (negative: "
          "before curl started); server got GET: when the request was sent; first event: of the "
          "runs with one; captured: runs whose GET was captured in curl")
    rows = []

    def med(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return ms(median(known)) if known else "-"

    for label, _ in targets:
        for case in ("new copy", "attached copy"):
            ms_ = [m for m in per[label] if m.client.case == case]
            rows.append([f"{label}: {case}",
                         med([m.since_exec(m.attached_ns) for m in ms_ if not m.refused]),
                         med([m.since_exec(m.served_ns) for m in ms_]),
                         med([m.since_exec(m.first_ns) for m in ms_]),
                         f"{sum(m.captured for m in ms_)}/{len(ms_)}",
                         sum(1 for m in ms_ if m.refused)])
    print_table(["checkout: case", "attached", "server got GET", "first event", "captured",
                 "refused"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per case and checkout (default: 3 start-up, 5 latency)")
    ap.add_argument("--copies", type=int, default=50,
                    help="containers, each with its own libssl in use (default 50)")
    ap.add_argument("--ecapture", action="append", metavar="DIR",
                    help="checkout to run `ecapture tls` from (repeatable; default: this tree)")
    ap.add_argument("--only", choices=("startup", "latency"), help="run one part only")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep the latency part's recordings (LABEL.ecap) in DIR")
    args = ap.parse_args()
    require_root()
    if reason := missing_tools():
        sys.exit(f"containers: {reason}")
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"containers: needs {tool}")
    targets = checkouts(args.ecapture)
    # SIGTERM ends the run as Ctrl-C does: through every with block, so nothing is left.
    # SIGINT too when started where it is ignored (a background job of a script).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with scratch_dir("ecap-containers-") as tmp, tls_server(tmp) as (port, server):
        if args.only != "latency":
            startup(targets, args, tmp, {wait_mapped(server, LIBSSL)})
        if args.only != "startup":
            latency(targets, args, tmp, port)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # everything started is stopped by now

"""``python -m ecapture.testing.matrix``: run the kernel matrix, run the suite on this kernel,
or print the table of earlier results. Exit 0 only when every kernel passed."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ecapture.testing.matrix import guest, kernel_log, kernels, suite, table

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_KERNELS = "5.10,6.1,6.12,7"


def _suite_args(args: argparse.Namespace) -> list[str]:
    extra = []
    for s in args.suite or []:
        extra += ["--suite", s]
    return extra + (["--", *args.pytest_args] if args.pytest_args else [])


def cmd_suite(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = suite.run(out, args.label or kernels_label(), Path(args.root),
                       tuple(args.suite or suite.DEFAULT_SUITE), tuple(args.pytest_args),
                       kernel_log_since=args.kernel_log_since)
    print(table.render([result]), end="")
    return 0 if table.status(result) == "pass" else 1


def kernels_label() -> str:
    import platform

    return platform.release()


def guest_script(d: Path, inner: list[str]) -> str:
    """The guest's command: a script in the row's directory (which the guest shares), run
    with sh. vng wraps its --exec text in quotes of its own, and an argument with quotes
    or brackets inside (a test id, a -k expression) left the guest's shell waiting for
    the rest of a line that never came."""
    # PYTHONPATH: the guest imports this very tree, even when the interpreter's own
    # install of ecapture points elsewhere (a snapshot checkout running the matrix).
    here = shlex.quote(str(ROOT))
    script = d / "guest.sh"
    script.write_text(f"cd {here} && PYTHONPATH={here} exec {shlex.join(inner)}\n")
    return f"sh {shlex.quote(str(script))}"


def _guest_row(k: kernels.Kernel, out: Path, args: argparse.Namespace) -> Path:
    d = out / k.release
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").unlink(missing_ok=True)
    # A guest boots for this row alone, so its whole log, boot included, is the row's.
    inner = [sys.executable, "-m", "ecapture.testing.matrix", "suite", "--out", str(d),
             "--label", k.release, "--root", str(ROOT), "--kernel-log-since", "boot",
             *_suite_args(args)]
    rc = guest.run(k, guest_script(d, inner), [out], d / "console.log", timeout=args.timeout)
    if not (d / "result.json").exists():  # the guest never got as far as writing it
        why = ("guest did not boot (vng exit 255, twice)" if rc == guest.GUEST_FAILED
               else f"guest command exited {rc} without results")
        # An oops or panic raises the console's log level, so what killed the guest is
        # in its console log even when the suite never wrote one of its own.
        console = (d / "console.log").read_text(errors="replace")
        (d / "result.json").write_text(json.dumps(
            {"label": k.release, "error": f"{why}; see {d / 'console.log'}", "tests": [],
             "kernel_log": {"file": "console.log", "since": "boot", "lost": 0,
                            **kernel_log.scan(console).to_json()}}))
    print(f"matrix: {k.release} done (exit {rc})", file=sys.stderr, flush=True)
    return d


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dirs: list[Path] = []
    if args.host:
        d = out / f"host-{kernels_label()}"
        print(f"matrix: host kernel {kernels_label()}", file=sys.stderr, flush=True)
        suite.run(d, f"{kernels_label()} (host)", ROOT, tuple(args.suite or suite.DEFAULT_SUITE),
                  tuple(args.pytest_args))
        dirs.append(d)
    wanted = [s for s in args.kernels.split(",") if s]
    resolved: list[kernels.Kernel] = []
    for series in wanted:
        try:
            resolved.append(kernels.fetch(series))
        except kernels.KernelError as e:
            print(f"matrix: {e}", file=sys.stderr)
            d = out / f"series-{series}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "result.json").write_text(json.dumps(
                {"label": series, "error": str(e), "tests": []}))
            dirs.append(d)
    print("matrix: kernels " + ", ".join(k.release for k in resolved), file=sys.stderr,
          flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        dirs += list(pool.map(lambda k: _guest_row(k, out, args), resolved))
    return _report(dirs, out)


def _report(dirs: list[Path], out: Path) -> int:
    results = table.load(dirs)
    text = table.render(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    table.merge_junit(dirs, out / "junit.xml")
    print(text, end="")
    print(f"matrix: table in {out / 'table.md'}, junit in {out / 'junit.xml'}", file=sys.stderr)
    return 0 if results and all(table.status(r) == "pass" for r in results) else 1


def cmd_table(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dirs]
    if len(dirs) == 1 and not (dirs[0] / "result.json").exists():
        dirs = sorted(p.parent for p in dirs[0].glob("*/result.json"))
    return _report(dirs, Path(args.out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecapture.testing.matrix", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--suite", action="append", metavar="PATH",
                        help="test paths to run (default: tests/integration); repeatable")
        sp.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")

    r = sub.add_parser("run", help="boot each kernel under qemu and run the suite in it")
    r.add_argument("--kernels", default=DEFAULT_KERNELS,
                   help=f"comma-separated Debian kernel series (default {DEFAULT_KERNELS})")
    r.add_argument("--no-host", dest="host", action="store_false",
                   help="skip the row of the host's own kernel")
    r.add_argument("--out", default="matrix-results", help="results directory")
    r.add_argument("--jobs", type=int, default=2, help="guests at once (one vCPU each)")
    r.add_argument("--timeout", type=float, default=7200,
                   help="seconds per guest (the suite takes about an hour under TCG)")
    common(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("suite", help="run the suite on this kernel (in a guest, a box, "
                                     "or the host) and write result.json and junit.xml")
    s.add_argument("--out", required=True)
    s.add_argument("--label")
    s.add_argument("--root", default=str(ROOT), help="the source tree holding the tests")
    s.add_argument("--kernel-log-since", choices=("start", "boot"), default="start",
                   help="kernel log to check: since the suite started (default), or since "
                        "boot (a machine booted for this run alone)")
    common(s)
    s.set_defaults(func=cmd_suite)

    t = sub.add_parser("table", help="print the table of result directories")
    t.add_argument("dirs", nargs="+", help="result directories, or one parent of them")
    t.add_argument("--out", default=".", help="where table.md and junit.xml go")
    t.set_defaults(func=cmd_table)

    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except (kernels.KernelError, OSError) as e:
        print(f"matrix: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

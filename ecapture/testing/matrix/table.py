"""Turn result directories (one per kernel, written by :mod:`.suite`) into the matrix table
and one merged junit XML. Pure: reads files, returns text."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ecapture.testing.matrix import kernel_log


def load(dirs: Iterable[Path]) -> list[dict[str, Any]]:
    results = []
    for d in dirs:
        path = d / "result.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
    return results


def cell(tests: list[dict[str, Any]]) -> str:
    """One module on one kernel: 'pass 28', 'FAIL 2/28: a, b', or 'skip: reason'."""
    if not tests:
        return "-"
    failed = [t for t in tests if t["outcome"] in ("failed", "error")]
    skipped = [t for t in tests if t["outcome"] == "skipped"]
    passed = [t for t in tests if t["outcome"] == "passed"]
    if failed:
        names = ", ".join(t["id"].rsplit("::", 1)[-1] for t in failed[:3])
        more = f" +{len(failed) - 3}" if len(failed) > 3 else ""
        return f"FAIL {len(failed)}/{len(tests)}: {names}{more}"
    if skipped and not passed:
        return f"skip: {skipped[0]['message'] or 'no reason given'}"
    text = f"pass {len(passed)}"
    return text + (f" (skip {len(skipped)}: {skipped[0]['message']})" if skipped else "")


def paths(result: dict[str, Any]) -> tuple[str, str, str]:
    """(buffers, hooks, user-memory read helpers) that live sessions really used on this
    kernel, e.g. ('ringbuf+perf', 'uprobe, uretprobe, tracepoint, tc', 'user+combined')."""
    buffers: set[str] = set()
    reads: set[str] = set()
    hooks: list[str] = []
    for s in result.get("sessions", []):
        buffers.add(s.get("buffer", "?"))
        if "probe_read_user" in s:
            reads.add("user" if s["probe_read_user"] else "combined")
        for probe in s.get("probes", []):
            kind = probe.split(":", 1)[0]
            if kind not in hooks:
                hooks.append(kind)
    return ("+".join(b for b in ("ringbuf", "perf") if b in buffers) or "-",
            ", ".join(hooks) or "-",
            "+".join(r for r in ("user", "combined") if r in reads) or "-")


def log_cell(result: dict[str, Any]) -> str:
    """The kernel log of one run: 'clean', 'WARN 2, RCU stall 1', 'unread: why', or '-'
    for a result written before the log was read."""
    log = result.get("kernel_log")
    if not log:
        return "-"
    if log.get("error"):
        return f"unread: {log['error']}"
    text = kernel_log.describe(log.get("counts", {}))
    return text + (f" ({log['lost']} records lost)" if log.get("lost") else "")


def splats(result: dict[str, Any]) -> dict[str, int]:
    return dict((result.get("kernel_log") or {}).get("counts") or {})


def status(result: dict[str, Any]) -> str:
    """ERROR when the run never got going; FAIL when a test failed or the kernel logged a
    splat, however the tests went; else pass."""
    if result.get("error"):
        return "ERROR"
    bad = [t for t in result["tests"] if t["outcome"] in ("failed", "error")]
    failed = bad or result.get("pytest_rc", 0) not in (0, 5) or splats(result)
    return "FAIL" if failed else "pass"


def render(results: list[dict[str, Any]]) -> str:
    modules = sorted({t["module"] for r in results for t in r.get("tests", [])})
    head = ["kernel", "ringbuf?", "kprobes?", "buffers used", "hooks used", "reads used",
            *modules, "kernel log", "time", "result"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        f = r.get("features", {})
        buffers, hooks, reads = paths(r)
        row = [r["label"], _yes(f.get("ringbuf")), _yes(f.get("kprobes")), buffers, hooks, reads]
        for m in modules:
            row.append(cell([t for t in r.get("tests", []) if t["module"] == m]))
        row += [log_cell(r), f"{r.get('seconds', 0):.0f} s", r.get("error") or status(r)]
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n" + splat_notes(results)


def splat_notes(results: list[dict[str, Any]]) -> str:
    """Below the table, for each kernel whose log has splats, the first line of each kind
    (the whole log is kernel.log in that kernel's result directory)."""
    lines = []
    for r in results:
        first = (r.get("kernel_log") or {}).get("first") or {}
        for kind, n in splats(r).items():
            line = first.get(kind, "").replace("`", "'")
            lines.append(f"- {r['label']}: {kind} {n}, first: `{line}`")
    if not lines:
        return ""
    return "\nKernel log splats (first line of each kind; the whole log is kernel.log " \
           "beside the kernel's result.json):\n\n" + "\n".join(lines) + "\n"


def _yes(value: Any) -> str:
    return {True: "yes", False: "no"}.get(value, "?")


def merge_junit(dirs: Iterable[Path], out: Path) -> None:
    """One junit file, one <testsuite> per kernel (named after it)."""
    merged = ET.Element("testsuites")
    for d in dirs:
        path = d / "junit.xml"
        if not path.exists():
            continue
        root = ET.parse(path).getroot()
        for suite in ([root] if root.tag == "testsuite" else list(root)):
            merged.append(suite)
    ET.ElementTree(merged).write(out, encoding="utf-8", xml_declaration=True)

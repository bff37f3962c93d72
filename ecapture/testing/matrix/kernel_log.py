"""What the kernel logged while the suite ran, and the splats in it.

A run can pass every test and still leave the kernel hurt: a WARN_ON in the BPF core, an
RCU stall, a hung task. Those never reach pytest; they reach the kernel's log. This module
reads the log of one run and finds the reports that only a kernel in trouble prints.

:func:`scan` is pure: it takes log text (``dmesg``, ``dmesg --raw``, or a console) and
returns what it found. :func:`mark` and :func:`read_since` read ``/dev/kmsg``.

What counts is a report's *header*, matched at the start of a message, never inside one:
``WARNING: CPU: 0 PID: 1 at ...`` (``WARNING: kernel/x.c:1 at ..., CPU#0: ...`` from 6.x
on), ``BUG: ...``, ``kernel BUG at``, an oops line (``...: 0000 [#1]``), a panic, an RCU
stall, a hung task, a soft or hard lockup, UBSAN, lockdep, list corruption, kmemleak. A
``Call Trace:`` with no header in the lines before it (some code calls ``dump_stack()`` on
its own) and a ``cut here`` line that no header follows count as ``splat``. Plain
``WARNING:`` notices without a trace (``WARNING: The mand mount option...``, the
Spectre notes at boot) do not count: they say something about a setting, not a bug.
Anchoring at the start keeps out a process's own text quoted in a message (a segfault
line, a ``traps:`` line, anything a BPF program printed), and records that userspace
wrote to ``/dev/kmsg`` are skipped: the kernel gives every one of them a facility above 0,
which the ``<priority>`` prefix of :func:`format_record` keeps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

KMSG = "/dev/kmsg"

# (kind, header). Order matters: the first match names the kind, so the specific BUG:
# headers come before the general one. A pattern may name its kind with (?P<kind>...).
HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((k, re.compile(p)) for k, p in (
    ("panic", r"Kernel panic - not syncing"),
    ("soft lockup", r"(?:(?:NMI )?watchdog: )?BUG: soft lockup"),
    ("hard lockup", r"(?:NMI )?watchdog: (?:CPU\d+: )?Watchdog detected hard LOCKUP"),
    ("sanitizer", r"BUG: (?P<kind>KASAN|KFENCE|KMSAN|KCSAN): "),
    ("BUG", r"BUG: |[Kk]ernel BUG at |BUG [\w.:-]+ \([^)]*\): "),  # the last is SLUB's
    ("Oops", r"[^\[]*: [0-9a-f]{4,16} \[#\d+\]"),  # die(): "Oops: 0000 [#1] SMP"
    ("WARN", r"WARNING: (?:CPU: \d+ PID: \d+ at |at |\S+:\d+ at )"),
    ("lockdep", r"(?:\[ )?(?:WARNING|INFO): (?:possible (?:circular|recursive|irq lock)"
                r"|inconsistent lock state|bad unlock balance|held lock freed"
                r"|lock held when returning|.*lock order detected|Nested lock was not taken"
                r"|suspicious RCU usage)"),
    ("RCU stall", r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall"),
    ("hung task", r"INFO: task .+:\d+ blocked.* for more than \d+ seconds"),
    ("UBSAN", r"UBSAN: "),
    ("list corruption", r"\w*list_\w+ corruption"),
    ("kmemleak", r"kmemleak: \d+ new suspected memory leaks"),
))

_CALL_TRACE = re.compile(r"Call Trace:")
_CUT_HERE = re.compile(r"-+\[ cut here \]-+")
_CPU_LINE = re.compile(r"CPU: \d+ (?:UID: \d+ )?PID: \d+ ")
# One report, header to last trace line, fits in this many lines; a Call Trace further
# from any header is a report of its own. An RCU stall prints a trace per CPU, lockdep a
# chain of stacks before its own, so the window is generous.
REPORT_LINES = 300
# WARN(cond, fmt) prints its message between "cut here" and the WARNING line.
_CUT_HERE_LINES = 6

# Optional "<pri>" (dmesg --raw), "[ seconds]" and, with CONFIG_PRINTK_CALLER, "[T123]".
_PREFIX = re.compile(r"(?:<(?P<pri>\d+)>)?(?:\[\s*\d+\.\d+\])?(?:\[\s*[TC]\d+\])?\s?")


@dataclass(frozen=True)
class Splat:
    kind: str
    line: str  # the header's message, timestamp stripped
    lineno: int  # 1-based, in the scanned text


@dataclass(frozen=True)
class Findings:
    splats: tuple[Splat, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Splats per kind, kinds in order of first appearance."""
        counts: dict[str, int] = {}
        for s in self.splats:
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return counts

    @property
    def first(self) -> dict[str, str]:
        """The first header line of each kind."""
        first: dict[str, str] = {}
        for s in self.splats:
            first.setdefault(s.kind, s.line)
        return first

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "first": self.first}


def message(line: str) -> str | None:
    """The message of one log line, its level, timestamp and caller prefix stripped; None
    for a record userspace wrote (syslog facility above 0, known only from ``--raw``)."""
    m = _PREFIX.match(line)
    assert m is not None  # every part of the prefix is optional
    if m["pri"] is not None and int(m["pri"]) >= 8:
        return None
    return line[m.end():].rstrip()


def header(text: str) -> str | None:
    """The kind of splat whose report begins with this message, if any."""
    for kind, pattern in HEADERS:
        m = pattern.match(text)
        if m:
            return m.groupdict().get("kind") or kind
    return None


def scan(text: str) -> Findings:
    """Every splat in a kernel log, in order."""
    messages = [message(line) for line in text.splitlines()]
    splats: list[Splat] = []
    last_header = -REPORT_LINES - 1
    cut_here: int | None = None
    for i, msg in enumerate(messages):
        if msg is None:
            continue
        kind = header(msg)
        if kind is not None:
            splats.append(Splat(kind, msg[:300], i + 1))
            last_header, cut_here = i, None
        elif _CUT_HERE.match(msg):
            cut_here = i
        elif _CALL_TRACE.match(msg) and i - last_header > REPORT_LINES:
            splats.append(_after_cut_here(messages, cut_here) if cut_here is not None
                          else Splat("splat", _trace_reason(messages, i)[:300], i + 1))
            last_header, cut_here = i, None
        if cut_here is not None and i - cut_here >= _CUT_HERE_LINES:
            # A "cut here" that no header followed: a report in a format we do not know.
            splats.append(_after_cut_here(messages, cut_here))
            last_header, cut_here = i, None
    if cut_here is not None:
        splats.append(_after_cut_here(messages, cut_here))
    return Findings(tuple(splats))


def _after_cut_here(messages: list[str | None], cut_here: int) -> Splat:
    """A report that began with "cut here" and no header we know: named by its next line."""
    after = next((m for m in messages[cut_here + 1:] if m), None)
    return Splat("splat", (after or "cut here")[:300], cut_here + 2)


def _trace_reason(messages: list[str | None], i: int) -> str:
    """For a bare ``dump_stack()``: the line before its ``CPU: N PID: ...`` line, which is
    usually what the caller printed as the reason; else the Call Trace line itself."""
    for j in range(i - 1, max(-1, i - 6), -1):
        msg = messages[j]
        if msg is not None and _CPU_LINE.match(msg):
            before = next((m for m in reversed(messages[max(0, j - 3):j]) if m), None)
            return before or msg
    return messages[i] or "Call Trace:"


def describe(counts: dict[str, int]) -> str:
    """A table cell: 'clean', or 'WARN 2, RCU stall 1'."""
    return ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "clean"


# Reading the log. /dev/kmsg gives each record with its sequence number, so "since the
# suite started" is exact (no clock to compare) and records the ring buffer dropped in
# between show up as a gap in the numbers.

def parse_record(record: str) -> tuple[int, int, int, str]:
    """(priority, sequence, microseconds since boot, message) of one /dev/kmsg record:
    ``pri,seq,usec,flags[,...];message`` then dictionary lines that begin with a space."""
    head, _, rest = record.partition(";")
    pri, seq, usec = (int(f) for f in head.split(",")[:3])
    return pri, seq, usec, rest.split("\n", 1)[0]


def format_record(pri: int, usec: int, msg: str) -> str:
    """The record as ``dmesg --raw`` prints it, but with the priority as /dev/kmsg gives
    it, facility included (``dmesg`` keeps only the level), so that :func:`scan` can
    tell what userspace wrote."""
    return f"<{pri}>[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}] {msg}"


def _records(path: str) -> Iterator[tuple[int, int, int, str]]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                chunk = os.read(fd, 16384)  # one record per read; the kernel's are < 8 KiB
            except BlockingIOError:  # read all there is
                return
            except BrokenPipeError:  # the record we were at was overwritten: go on
                continue
            if not chunk:
                return
            yield parse_record(chunk.decode("utf-8", errors="replace"))
    finally:
        os.close(fd)


def mark(path: str = KMSG) -> int:
    """The sequence number of the newest record now (-1 for an empty log)."""
    last = -1
    for _, seq, _, _ in _records(path):
        last = seq
    return last


def read_since(after: int, path: str = KMSG) -> tuple[str, int]:
    """The records after sequence number ``after`` (-1: the whole log since boot), one
    line each in :func:`format_record`'s form, and how many of them the ring buffer had
    already dropped."""
    lines: list[str] = []
    lost, prev = 0, after
    for pri, seq, usec, msg in _records(path):
        if seq <= after:
            continue
        lost += seq - prev - 1
        prev = seq
        lines.append(format_record(pri, usec, msg))
    return "".join(line + "\n" for line in lines), lost

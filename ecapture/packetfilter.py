"""Packet filters in tcpdump's syntax: compiled by tcpdump, run by a classic BPF interpreter.

Rule of this module: pure, except :func:`compile_filter`, which runs ``tcpdump`` (no root,
no network device: it compiles against a pcap file that holds only a header). Everything
else is computation over bytes and tuples.

- :func:`compile_filter` turns an expression into a classic BPF (cBPF) :data:`Program` by
  asking tcpdump itself (``tcpdump -ddd``), so the whole of pcap-filter(7) is available
  and means exactly what it means to tcpdump.
- :func:`run` executes a program over one frame with libpcap's user-space semantics; it is
  the reference the kernel translation (:mod:`ecapture.bpfasm`) is tested against, and the
  fallback when a program cannot run in the kernel.
- :func:`compile_matcher` is the one-call API for outputs: expression -> predicate.

Semantics of :func:`run`, as libpcap's ``bpf_filter`` (the tests hold it to tcpdump's own
verdicts): A, X and the 16 scratch words start at 0; arithmetic is on unsigned 32-bit
words; a packet load past the captured bytes, and a division or modulo by zero, end the
program with 0 (reject); a shift by 32 or more gives 0; ``len`` is the wire length; ``ja``
takes its offset as signed, because libpcap's ``protochain`` jumps backwards.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ecapture.errors import ConfigError


class Insn(NamedTuple):
    """One classic BPF instruction, as in ``struct sock_filter`` / ``struct bpf_insn``."""

    code: int
    jt: int
    jf: int
    k: int


# A program as tcpdump -ddd prints it; any sequence of (code, jt, jf, k) runs.
Program = tuple[Insn, ...]
Matcher = Callable[[bytes, int], bool]

# --- classic BPF encoding (the public ABI of <net/bpf.h> / <linux/filter.h>) ----------------

LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

MEMWORDS = 16  # BPF_MEMWORDS: the scratch memory M[0..15]
MAXINSNS = 4096  # BPF_MAXINSNS: longest program libpcap and Linux accept
SIZES = {W: 4, H: 2, B: 1}

ALU_OPS = (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR)
JUMP_OPS = (JEQ, JGT, JGE, JSET)

# Every instruction libpcap's interpreter knows. RET X is not one: neither libpcap nor
# Linux has it.
VALID_CODES: frozenset[int] = frozenset(
    [LD | size | mode for size in (W, H, B) for mode in (ABS, IND)]
    + [LD | W | IMM, LD | W | MEM, LD | W | LEN]
    + [LDX | W | IMM, LDX | W | MEM, LDX | W | LEN, LDX | B | MSH]
    + [ST, STX]
    + [ALU | op | src for op in ALU_OPS for src in (K, X)] + [ALU | NEG]
    + [JMP | JA] + [JMP | op | src for op in JUMP_OPS for src in (K, X)]
    + [RET | K, RET | RET_A]
    + [MISC | TAX, MISC | TXA])

# tcpdump's default snapshot length; an accepting program returns it, like tcpdump's own.
SNAPLEN = 262144
ACCEPT_ALL: Program = (Insn(RET | K, 0, 0, SNAPLEN),)

# run() gives up on a program after this many steps and rejects the packet. Only backward
# jumps can loop, and libpcap's only ones (protochain) advance through the packet until a
# load falls off its end, so real programs stop long before this.
MAX_STEPS = 1_000_000

_MASK = 0xFFFFFFFF

# --- compiling with tcpdump ------------------------------------------------------------------

TCPDUMP_INSTALL_HINT = ("packet filters are compiled by tcpdump, which is not installed: "
                        "install it (apt-get install tcpdump, dnf install tcpdump)")
# tcpdump may live in an sbin directory that a non-root PATH lacks.
_TCPDUMP_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_COMPILE_TIMEOUT_S = 60  # host names in a filter are resolved while compiling


def find_tcpdump() -> str | None:
    """The tcpdump binary: on PATH, else in the usual system directories."""
    found = shutil.which("tcpdump")
    if found:
        return found
    for directory in _TCPDUMP_DIRS:
        path = os.path.join(directory, "tcpdump")
        if os.access(path, os.X_OK):
            return path
    return None


def pcap_header(linktype: int, snaplen: int = SNAPLEN) -> bytes:
    """A pcap file header (microsecond timestamps, version 2.4, native byte order)."""
    return struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def compile_filter(expression: str, linktype: int = 1) -> Program:
    """Compile a tcpdump filter expression for frames of ``linktype`` (a pcap LINKTYPE_*
    value; 1 is Ethernet) into a classic BPF program, by running ``tcpdump -ddd``.

    An empty or all-whitespace expression is :data:`ACCEPT_ALL` (one ``ret #262144``, what
    tcpdump itself compiles for no filter) without running tcpdump.

    Raises :class:`~ecapture.errors.ConfigError` (one line) if tcpdump is missing or
    rejects the expression, quoting tcpdump's complaint.
    """
    if not expression.strip():
        return ACCEPT_ALL
    tcpdump = find_tcpdump()
    if tcpdump is None:
        raise ConfigError(TCPDUMP_INSTALL_HINT)
    # tcpdump compiles for the link type of the file it reads; a header-only file needs no
    # device and no privileges. The .pcap suffix keeps AppArmor's tcpdump profile happy.
    fd, path = tempfile.mkstemp(prefix="ecapture-filter-", suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pcap_header(linktype))
        # "--": an expression that starts with "-" is not an option.
        proc = subprocess.run([tcpdump, "-ddd", "-r", path, "--", expression],
                              capture_output=True, text=True, errors="replace",
                              timeout=_COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"filter {expression!r}: tcpdump did not compile it within "
                          f"{_COMPILE_TIMEOUT_S}s (a host name that does not resolve?)"
                          ) from None
    except OSError as e:
        raise ConfigError(f"filter {expression!r}: cannot run {tcpdump}: {e.strerror}"
                          ) from None
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise ConfigError(f"bad filter {expression!r}: {_complaint(proc.stderr)}")
    try:
        return parse_ddd(proc.stdout)
    except ValueError as e:
        raise ConfigError(f"filter {expression!r}: unexpected output from {tcpdump}: {e}"
                          ) from None


def _complaint(stderr: str) -> str:
    """tcpdump's error, on one line, without its "reading from file" notice."""
    lines = [line.strip() for line in stderr.splitlines()]
    lines = [line.removeprefix("tcpdump: ") for line in lines
             if line and not line.startswith("reading from file")]
    return "; ".join(lines) or "tcpdump rejected it"


def parse_ddd(text: str) -> Program:
    """Parse ``tcpdump -ddd`` output: a count, then one ``code jt jf k`` line each."""
    lines = text.split("\n")
    rows = [line.split() for line in lines if line.strip()]
    if not rows or len(rows[0]) != 1:
        raise ValueError("no instruction count")
    count = int(rows[0][0])
    program = []
    for row in rows[1:]:
        if len(row) != 4:
            raise ValueError(f"bad instruction line {' '.join(row)!r}")
        code, jt, jf, k = (int(v) for v in row)
        if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF
                and 0 <= k <= _MASK):
            raise ValueError(f"instruction out of range {' '.join(row)!r}")
        program.append(Insn(code, jt, jf, k))
    if len(program) != count or count == 0:
        raise ValueError(f"{len(program)} instructions, announced {count}")
    return tuple(program)


# --- the interpreter -------------------------------------------------------------------------

def _load(packet: bytes, offset: int, size: int) -> int | None:
    if offset + size > len(packet):
        return None
    return int.from_bytes(packet[offset:offset + size], "big")


def _alu(op: int, a: int, operand: int) -> int | None:
    """A op operand on 32-bit words; None for a division by zero (the program rejects)."""
    if op == ADD:
        return (a + operand) & _MASK
    if op == SUB:
        return (a - operand) & _MASK
    if op == MUL:
        return (a * operand) & _MASK
    if op == DIV:
        return a // operand if operand else None
    if op == MOD:
        return a % operand if operand else None
    if op == OR:
        return a | operand
    if op == AND:
        return a & operand
    if op == XOR:
        return a ^ operand
    if op == LSH:
        return (a << operand) & _MASK if operand < 32 else 0
    if op == RSH:
        return a >> operand if operand < 32 else 0
    raise ValueError(f"unknown ALU operation {op:#x}")


def _jump(op: int, a: int, operand: int) -> bool:
    if op == JEQ:
        return a == operand
    if op == JGT:
        return a > operand
    if op == JGE:
        return a >= operand
    if op == JSET:
        return a & operand != 0
    raise ValueError(f"unknown jump {op:#x}")


def run(program: Sequence[tuple[int, int, int, int]], packet: bytes,
        wirelen: int | None = None) -> int:
    """Run a classic BPF program over ``packet`` (the captured bytes of a frame whose wire
    length is ``wirelen``, by default ``len(packet)``) and return what it returns: 0
    rejects the frame, anything else accepts it (libpcap keeps that many bytes).

    Raises ValueError for a malformed program (unknown instruction, a jump or fall off the
    end, a scratch index past 15); a valid program never raises, whatever the packet.
    """
    wire = len(packet) if wirelen is None else wirelen
    a = x = 0
    mem = [0] * MEMWORDS
    pc = 0
    n = len(program)
    for _ in range(MAX_STEPS):
        if not 0 <= pc < n:
            raise ValueError(f"cBPF program runs off its end (pc {pc} of {n})")
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (LD, LDX):
            mode = code & 0xE0
            size = SIZES.get(code & 0x18, 0)
            value: int | None
            if code not in VALID_CODES:
                raise ValueError(f"unknown cBPF instruction {code:#x} at {pc - 1}")
            if mode == ABS:
                value = _load(packet, k, size)
            elif mode == IND:
                value = _load(packet, x + k, size)  # unbounded sum: no wrap-around
            elif mode == MSH:
                byte = _load(packet, k, 1)
                value = None if byte is None else (byte & 0x0F) << 2
            elif mode == IMM:
                value = k
            elif mode == LEN:
                value = wire & _MASK
            else:  # MEM
                value = mem[_memindex(k, pc - 1)]
            if value is None:
                return 0  # a load past the captured bytes
            if cls == LD:
                a = value
            else:
                x = value
        elif cls in (ST, STX):
            if code not in VALID_CODES:
                raise ValueError(f"unknown cBPF instruction {code:#x} at {pc - 1}")
            mem[_memindex(k, pc - 1)] = a if cls == ST else x
        elif cls == ALU:
            op = code & 0xF0
            if code not in VALID_CODES:
                raise ValueError(f"unknown cBPF instruction {code:#x} at {pc - 1}")
            if op == NEG:
                a = -a & _MASK
                continue
            result = _alu(op, a, x if code & X else k)
            if result is None:
                return 0  # division by zero
            a = result
        elif cls == JMP:
            op = code & 0xF0
            if code not in VALID_CODES:
                raise ValueError(f"unknown cBPF instruction {code:#x} at {pc - 1}")
            if op == JA:
                # Signed, as libpcap reads it: protochain loops with a backward "ja".
                pc += k - (1 << 32) if k & 0x80000000 else k
            else:
                pc += jt if _jump(op, a, x if code & X else k) else jf
        elif cls == RET:
            if code == RET | K:
                return k
            if code == RET | RET_A:
                return a
            raise ValueError(f"unknown cBPF instruction {code:#x} at {pc - 1}")
        else:  # MISC
            if code == MISC | TAX:
                x = a
            elif code == MISC | TXA:
                a = x
            else:
                raise ValueError(f"unknown cBPF instruction {code:#x} at {pc - 1}")
    return 0  # still looping after MAX_STEPS: see MAX_STEPS


def _memindex(k: int, pc: int) -> int:
    if not 0 <= k < MEMWORDS:
        raise ValueError(f"scratch memory index {k} out of range at {pc}")
    return k


def validate(program: Sequence[tuple[int, int, int, int]]) -> None:
    """Check a program's shape once, so that :func:`run` cannot raise on it: 1 to
    MAXINSNS known instructions with fields in range (8-bit jt/jf, 32-bit k), jumps inside
    the program, scratch indexes below 16, and a
    last instruction that returns. Raises ValueError saying what is wrong."""
    n = len(program)
    if not 0 < n <= MAXINSNS:
        raise ValueError(f"cBPF program of {n} instructions (1 to {MAXINSNS} allowed)")
    for pc, (code, jt, jf, k) in enumerate(program):
        if code not in VALID_CODES:
            raise ValueError(f"unknown cBPF instruction {code:#x} at {pc}")
        if not (0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= _MASK):
            raise ValueError(f"instruction fields out of range at {pc}")
        cls, mode = code & 0x07, code & 0xE0
        if (cls in (ST, STX) or (cls in (LD, LDX) and mode == MEM)) and not 0 <= k < MEMWORDS:
            raise ValueError(f"scratch memory index {k} out of range at {pc}")
        if cls == JMP:
            if code == JMP | JA:
                targets = [pc + 1 + (k - (1 << 32) if k & 0x80000000 else k)]
            else:
                targets = [pc + 1 + jt, pc + 1 + jf]
            if any(not 0 <= t < n for t in targets):
                raise ValueError(f"jump out of the program at {pc}")
    if program[-1][0] & 0x07 != RET:
        raise ValueError("cBPF program does not end with a return")


def compile_matcher(expression: str | None, linktype: int = 1) -> Matcher:
    """``expression`` (tcpdump syntax; None or blank accepts everything) as a predicate
    ``match(frame, wirelen) -> bool`` over captured frames of ``linktype``.

    Raises :class:`~ecapture.errors.ConfigError` as :func:`compile_filter` does.
    """
    if expression is None or not expression.strip():
        return lambda frame, wirelen: True
    program = compile_filter(expression, linktype)
    try:
        validate(program)
    except ValueError as e:
        raise ConfigError(f"filter {expression!r}: tcpdump produced a program we cannot "
                          f"run: {e}") from None

    def match(frame: bytes, wirelen: int) -> bool:
        return run(program, frame, wirelen) != 0

    return match

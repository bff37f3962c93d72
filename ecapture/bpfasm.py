"""Classic BPF (as tcpdump compiles it) to eBPF bytecode for a TC classifier.

Rule of this module: pure, no I/O. It takes a cBPF program (:mod:`ecapture.packetfilter`)
and returns eBPF instruction bytes ready for ``BPF_PROG_LOAD`` as a
``BPF_PROG_TYPE_SCHED_CLS`` program; loading is :mod:`ecapture.live.bpfsys`'s job.

Register use, chosen so that the legacy packet loads (``BPF_LD_ABS``/``BPF_LD_IND``) can be
used as they are: they read the ``__sk_buff`` from R6, leave their result in R0 and
clobber R1-R5, and they end the program with 0 when the load is out of bounds, which is
exactly classic BPF's "out of bounds rejects".

- R6: the context (``struct __sk_buff *``), kept from R1.
- R0: the accumulator A. R7: the index register X. Both hold 32-bit values, zero-extended.
- R8: A saved across the load of ``ldx 4*([k]&0xf)``, which goes through R0.
- R2: scratch for computed offsets, just before a load.
- the stack: the 16 scratch words M[0..15], one 32-bit word each at R10-64..R10-4.

Where eBPF differs from classic BPF the translation adds the classic meaning: 32-bit
compares (JMP32, Linux 5.1+) because eBPF's 64-bit compares would sign-extend large
constants; an explicit "reject" for division by zero (eBPF would give 0 and go on); 0 for
shifts by 32 or more (eBPF masks the count); a "reject" for packet offsets of 2**31 or more
(the kernel's load helper would read them as negative "special" offsets). ``len`` is
``__sk_buff.len``. A, X and the scratch words start at 0, as in libpcap (and the verifier
refuses reads of uninitialized registers and stack).

Every program ends in one of two epilogues (:class:`TailCall` or :class:`ReturnVerdict`).
Backward jumps (libpcap's ``protochain``) are refused: the verifier cannot prove that such
a loop ends, and the Linux kernel refuses them in classic BPF too; such filters stay in
user space (:func:`ecapture.packetfilter.run`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ecapture import packetfilter as c

# --- eBPF encoding (<linux/bpf.h>, <linux/bpf_common.h>) ------------------------------------

E_LD, E_LDX, E_ST, E_STX, E_ALU, E_JMP, E_JMP32, E_ALU64 = range(8)
E_W, E_H, E_B, E_DW = 0x00, 0x08, 0x10, 0x18
E_IMM, E_ABS, E_IND, E_MEM = 0x00, 0x20, 0x40, 0x60
E_K, E_X = 0x00, 0x08
E_MOV = 0xB0
E_JA, E_JEQ, E_JGT, E_JGE, E_JSET, E_JNE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
E_CALL, E_EXIT, E_JLT, E_JLE = 0x80, 0x90, 0xA0, 0xB0

R0, R1, R2, R3, R6, R7, R8, R10 = 0, 1, 2, 3, 6, 7, 8, 10
REG_A, REG_X, REG_CTX, REG_SAVE, REG_OFF, REG_FP = R0, R7, R6, R8, R2, R10

BPF_PSEUDO_MAP_FD = 1
BPF_FUNC_TAIL_CALL = 12
SKB_LEN_OFFSET = 0  # offsetof(struct __sk_buff, len)
TC_ACT_OK = 0

# The verifier's limit on a privileged program's length (BPF_COMPLEXITY_LIMIT_INSNS).
MAX_EBPF_INSNS = 1_000_000
_S16 = (-(1 << 15), (1 << 15) - 1)  # range of a jump offset
_IND_LIMIT = 0x7FFFFFFF  # the largest offset the kernel's load helper reads as an offset

# Inverse conditions, to jump to the false branch when the true one is the next insn.
_INVERSE = {E_JEQ: E_JNE, E_JGT: E_JLE, E_JGE: E_JLT}
_CBPF_TO_EBPF_JUMP = {c.JEQ: E_JEQ, c.JGT: E_JGT, c.JGE: E_JGE, c.JSET: E_JSET}


class EbpfInsn(NamedTuple):
    """One eBPF instruction (``struct bpf_insn``)."""

    code: int
    dst: int
    src: int
    off: int
    imm: int


@dataclass(frozen=True, slots=True)
class TailCall:
    """Production epilogue: on a match, tail-call slot ``slot`` of the
    ``BPF_MAP_TYPE_PROG_ARRAY`` ``map_fd``; every exit returns TC_ACT_OK (0), so the filter
    never changes traffic (a failed tail call, an empty slot, a miss: all return 0)."""

    map_fd: int
    slot: int = 0


@dataclass(frozen=True, slots=True)
class ReturnVerdict:
    """Test epilogue: return 1 on a match and 0 otherwise, for ``BPF_PROG_TEST_RUN``."""


Epilogue = TailCall | ReturnVerdict


def _s32(k: int) -> int:
    """A 32-bit word as the signed immediate that carries the same bits."""
    k &= 0xFFFFFFFF
    return k - (1 << 32) if k & 0x80000000 else k


# --- assembly with symbolic labels -----------------------------------------------------------

@dataclass(slots=True)
class _Op:
    """An instruction whose jump offset may still be a label (resolved at layout)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: object = None  # a label, or None when ``off`` is final
    wide: bool = False  # LD_IMM64: two instruction slots


@dataclass(slots=True)
class _Block:
    label: object
    ops: list[_Op] = field(default_factory=list)


_MATCH = "match"
_REJECT = "reject"


def _mov_imm(dst: int, imm: int) -> _Op:
    return _Op(E_ALU | E_MOV | E_K, dst=dst, imm=_s32(imm))


def _mov_reg(dst: int, src: int, wide: bool = False) -> _Op:
    return _Op((E_ALU64 if wide else E_ALU) | E_MOV | E_X, dst=dst, src=src)


def _goto(label: object) -> _Op:
    return _Op(E_JMP | E_JA, target=label)


def _exit() -> _Op:
    return _Op(E_JMP | E_EXIT)


def _scratch(k: int) -> int:
    """Stack offset of M[k]."""
    return -4 * (c.MEMWORDS - k)


def _always_rejects(insn: c.Insn) -> bool:
    """Whether an instruction rejects every packet (translated to a plain jump to the
    reject exit): a load at an offset past any packet, a division by the constant 0."""
    code, _jt, _jf, k = insn
    cls, mode = code & 0x07, code & 0xE0
    if cls in (c.LD, c.LDX) and mode in (c.ABS, c.IND, c.MSH):
        return k > _IND_LIMIT
    return cls == c.ALU and code & 0xF0 in (c.DIV, c.MOD) and not code & c.X and k == 0


def _reachable(program: Sequence[c.Insn]) -> list[int]:
    """Indexes of the instructions some path from the first one reaches, in order. What
    follows an instruction that always rejects is not reached either: the verifier refuses
    code that cannot run."""
    seen = {0}
    todo = [0]
    while todo:
        pc = todo.pop()
        code, jt, jf, k = program[pc]
        cls = code & 0x07
        if cls == c.RET or _always_rejects(program[pc]):
            nexts: list[int] = []
        elif cls == c.JMP and code == c.JMP | c.JA:
            nexts = [pc + 1 + k]
        elif cls == c.JMP:
            nexts = [pc + 1 + jt, pc + 1 + jf]
        else:
            nexts = [pc + 1]
        for t in nexts:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return sorted(seen)


def _check_shape(program: Sequence[c.Insn]) -> None:
    try:
        c.validate(program)
    except ValueError as e:
        raise ValueError(f"cannot translate this cBPF program: {e}") from None
    for pc, (code, _jt, _jf, k) in enumerate(program):
        if code == c.JMP | c.JA and k & 0x80000000:
            raise ValueError(
                f"cannot translate this cBPF program: backward jump at {pc} (libpcap's "
                "protochain loops; the kernel cannot prove such a loop ends)")


def _translate_insn(insn: c.Insn, pc: int, next_label: object) -> Iterator[_Op]:
    """The eBPF for one classic instruction at ``pc``; ``next_label`` is what follows it
    in the layout, so a jump there can fall through instead."""
    code, jt, jf, k = insn
    cls = code & 0x07
    a, x = REG_A, REG_X

    if cls in (c.LD, c.LDX):
        dst = a if cls == c.LD else x
        mode = code & 0xE0
        if mode == c.IMM:
            yield _mov_imm(dst, k)
        elif mode == c.LEN:
            yield _Op(E_LDX | E_MEM | E_W, dst=dst, src=REG_CTX, off=SKB_LEN_OFFSET)
        elif mode == c.MEM:
            yield _Op(E_LDX | E_MEM | E_W, dst=dst, src=REG_FP, off=_scratch(k))
        elif mode == c.ABS:
            if k > _IND_LIMIT:  # past any packet; as an immediate it would be "special"
                yield _goto(_REJECT)
            else:
                yield _Op(E_LD | E_ABS | (code & 0x18), imm=k)
        elif mode == c.IND:
            if k > _IND_LIMIT:
                yield _goto(_REJECT)
                return
            # X + k exactly, in 64 bits (X is zero-extended, k < 2**31): an offset the
            # helper would take as negative is past any packet, so reject it ourselves.
            yield _mov_reg(REG_OFF, x, wide=True)
            if k:
                yield _Op(E_ALU64 | c.ADD | E_K, dst=REG_OFF, imm=k)
            yield _Op(E_JMP | E_JGT | E_K, dst=REG_OFF, imm=_IND_LIMIT, target=_REJECT)
            yield _Op(E_LD | E_IND | (code & 0x18), src=REG_OFF)
        else:  # MSH: X = 4 * (P[k] & 0xf); the load goes through R0, which is A
            if k > _IND_LIMIT:
                yield _goto(_REJECT)
                return
            yield _mov_reg(REG_SAVE, a, wide=True)
            yield _Op(E_LD | E_ABS | E_B, imm=k)
            yield _Op(E_ALU | c.AND | E_K, dst=R0, imm=0x0F)
            yield _Op(E_ALU | c.LSH | E_K, dst=R0, imm=2)
            yield _mov_reg(x, R0)
            yield _mov_reg(a, REG_SAVE)
    elif cls in (c.ST, c.STX):
        src = a if cls == c.ST else x
        yield _Op(E_STX | E_MEM | E_W, dst=REG_FP, src=src, off=_scratch(k))
    elif cls == c.ALU:
        op = code & 0xF0
        if op == c.NEG:
            yield _Op(E_ALU | c.NEG, dst=a)
        elif code & c.X:
            if op in (c.DIV, c.MOD):
                yield _Op(E_JMP32 | E_JEQ | E_K, dst=x, imm=0, target=_REJECT)
                yield _Op(E_ALU | op | E_X, dst=a, src=x)
            elif op in (c.LSH, c.RSH):
                # eBPF masks a shift count to 5 bits; classic BPF (libpcap) gives 0.
                yield _Op(E_JMP32 | E_JGE | E_K, dst=x, imm=32, off=2)
                yield _Op(E_ALU | op | E_X, dst=a, src=x)
                yield _Op(E_JMP | E_JA, off=1)
                yield _mov_imm(a, 0)
            else:
                yield _Op(E_ALU | op | E_X, dst=a, src=x)
        elif op in (c.DIV, c.MOD) and k == 0:
            yield _goto(_REJECT)
        elif op in (c.LSH, c.RSH) and k >= 32:
            yield _mov_imm(a, 0)
        else:
            yield _Op(E_ALU | op | E_K, dst=a, imm=_s32(k))
    elif cls == c.JMP:
        if code == c.JMP | c.JA:
            target: object = pc + 1 + k
            if target != next_label:
                yield _goto(target)
            return
        true_t: object = pc + 1 + jt
        false_t: object = pc + 1 + jf
        if true_t == false_t:
            if true_t != next_label:
                yield _goto(true_t)
            return
        ebpf_op = _CBPF_TO_EBPF_JUMP[code & 0xF0]
        src_bits = E_X if code & c.X else E_K
        src, imm = (x, 0) if code & c.X else (0, _s32(k))
        if false_t == next_label:
            yield _Op(E_JMP32 | ebpf_op | src_bits, dst=a, src=src, imm=imm, target=true_t)
        elif true_t == next_label and ebpf_op in _INVERSE:
            yield _Op(E_JMP32 | _INVERSE[ebpf_op] | src_bits, dst=a, src=src, imm=imm,
                      target=false_t)
        else:
            yield _Op(E_JMP32 | ebpf_op | src_bits, dst=a, src=src, imm=imm, target=true_t)
            yield _goto(false_t)
    elif cls == c.RET:
        if code == c.RET | c.K:
            yield _goto(_MATCH if k else _REJECT)
        else:  # RET A
            yield _Op(E_JMP32 | E_JEQ | E_K, dst=a, imm=0, target=_REJECT)
            yield _goto(_MATCH)
    else:  # MISC
        if code == c.MISC | c.TAX:
            yield _mov_reg(x, a)
        else:
            yield _mov_reg(a, x)


def _epilogue(label: str, epilogue: Epilogue) -> list[_Op]:
    if label == _REJECT:
        return [_mov_imm(R0, 0), _exit()]
    if isinstance(epilogue, ReturnVerdict):
        return [_mov_imm(R0, 1), _exit()]
    # bpf_tail_call(ctx, &prog_array, slot): does not return if it succeeds.
    return [
        _mov_reg(R1, REG_CTX, wide=True),
        _Op(E_LD | E_DW | E_IMM, dst=R2, src=BPF_PSEUDO_MAP_FD, imm=epilogue.map_fd,
            wide=True),
        _mov_imm(R3, epilogue.slot),
        _Op(E_JMP | E_CALL, imm=BPF_FUNC_TAIL_CALL),
        _mov_imm(R0, TC_ACT_OK),
        _exit(),
    ]


def translate(program: Sequence[tuple[int, int, int, int]], epilogue: Epilogue) -> bytes:
    """Translate a classic BPF program into eBPF for ``BPF_PROG_TYPE_SCHED_CLS``.

    Returns the instructions (8 little-endian bytes each). Raises ValueError for a program
    that is malformed, longer than classic BPF allows (4096), uses a backward jump, or
    whose translation may not fit eBPF's limits (1,000,000 insns; 16-bit jump offsets,
    also after the verifier's own rewriting, see :func:`_kernel_size`). tcpdump's filters
    are far below these limits: a few hundred classic instructions for long expressions.
    """
    prog = [c.Insn(*insn) for insn in program]
    _check_shape(prog)
    if isinstance(epilogue, TailCall) and not (
            0 <= epilogue.map_fd < 1 << 31 and 0 <= epilogue.slot < 1 << 32):
        raise ValueError(f"bad tail call target {epilogue}")

    order = _reachable(prog)
    # Prologue: the context where the packet loads want it; A, X and the scratch words that
    # are read start at 0 as in classic BPF (and the verifier rejects uninitialized reads).
    prologue = _Block("prologue", [_mov_reg(REG_CTX, R1, wide=True), _mov_imm(REG_A, 0),
                                   _mov_imm(REG_X, 0)])
    for k in sorted({prog[pc].k for pc in order
                     if prog[pc].code in (c.LD | c.W | c.MEM, c.LDX | c.W | c.MEM)}):
        prologue.ops.append(_Op(E_ST | E_MEM | E_W, dst=REG_FP, off=_scratch(k), imm=0))
    blocks = [prologue]
    for i, pc in enumerate(order):
        next_label: object = order[i + 1] if i + 1 < len(order) else None
        blocks.append(_Block(pc, list(_translate_insn(prog[pc], pc, next_label))))

    used = {op.target for b in blocks for op in b.ops if op.target in (_MATCH, _REJECT)}
    tails = [label for label in (_MATCH, _REJECT) if label in used]
    # The last classic instruction is a return: let it fall into its own epilogue.
    last = blocks[-1].ops
    if last and last[-1].code == E_JMP | E_JA and last[-1].target in tails:
        tails.sort(key=lambda label: label != last[-1].target)
        last.pop()
    if isinstance(epilogue, TailCall) and tails == [_MATCH, _REJECT]:
        # Both end with "return 0": the tail call falls through into the reject block.
        match_ops = _epilogue(_MATCH, epilogue)[:-2]
        blocks += [_Block(_MATCH, match_ops), _Block(_REJECT, _epilogue(_REJECT, epilogue))]
    else:
        blocks += [_Block(label, _epilogue(label, epilogue)) for label in tails]
    return _layout(blocks)


def _kernel_size(op: _Op) -> int:
    """An upper bound of how many instructions ``op`` becomes inside the kernel.

    The verifier rewrites each packet load into a helper call with an error check, each
    division or modulo by a register into a zero test around it, and a tail call into a
    bounds check plus the call; on JITs that want explicit zero-extension (riscv64, s390x,
    ppc64, ...) it also adds one after 32-bit operations. Jumps must still fit in 16 bits
    after that, or the load fails ("cannot be patched due to 16-bit range").
    """
    cls = op.code & 0x07
    if cls == E_LD and op.code & 0xE0 in (E_ABS, E_IND):
        return 8
    if cls == E_ALU and op.code & 0xF0 in (c.DIV, c.MOD) and op.code & E_X:
        return 8
    if op.code == E_JMP | E_CALL:
        return 8
    return 2


def _layout(blocks: list[_Block]) -> bytes:
    where: dict[object, int] = {}
    kernel_where: dict[object, int] = {}
    pos = kernel_pos = 0
    for block in blocks:
        where[block.label] = pos
        kernel_where[block.label] = kernel_pos
        pos += sum(2 if op.wide else 1 for op in block.ops)
        kernel_pos += sum(_kernel_size(op) for op in block.ops)
    if pos > MAX_EBPF_INSNS:
        raise ValueError(f"translated program has {pos} eBPF instructions; the kernel "
                         f"allows {MAX_EBPF_INSNS}")
    out = bytearray()
    pos = kernel_pos = 0
    for block in blocks:
        for op in block.ops:
            off = op.off
            kernel_pos += _kernel_size(op)
            if op.target is not None:
                off = where[op.target] - (pos + 1)
                span = kernel_where[op.target] - kernel_pos
                if not _S16[0] <= span <= _S16[1]:
                    raise ValueError(
                        f"filter too long for the kernel: a jump over {off} eBPF "
                        f"instructions may span {span} once the verifier expands packet "
                        "loads, and eBPF jump offsets are 16-bit")
            out += struct.pack("<BBhi", op.code, (op.src << 4) | op.dst, off, op.imm)
            if op.wide:  # second half of LD_IMM64: the upper 32 bits of the value
                out += struct.pack("<BBhi", 0, 0, 0, 0)
                pos += 1
            pos += 1
    return bytes(out)


def decode(insns: bytes) -> list[EbpfInsn]:
    """Split instruction bytes into :class:`EbpfInsn` (both halves of an LD_IMM64)."""
    if len(insns) % 8:
        raise ValueError(f"{len(insns)} bytes is not a whole number of eBPF instructions")
    out = []
    for i in range(0, len(insns), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", insns, i)
        out.append(EbpfInsn(code, regs & 0x0F, regs >> 4, off, imm))
    return out

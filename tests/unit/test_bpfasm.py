"""cBPF -> eBPF translation, without a kernel: the shape of the output (what the verifier
checks first) and its meaning, by running it on a small eBPF emulator written from the
eBPF instruction set documentation and comparing with the cBPF interpreter.

The kernel itself runs the same comparisons in tests/integration/test_packetfilter_live.py,
which reuses ``cbpf_programs`` and ``emulate`` from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_packetfilter import CORPUS, EXPRESSIONS, compiled, tcpdump  # noqa: F401

from ecapture import bpfasm
from ecapture import packetfilter as pf
from ecapture.bpfasm import EbpfInsn, ReturnVerdict, TailCall, decode, translate
from ecapture.packetfilter import Insn, run

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
CTX = "ctx"  # the __sk_buff pointer
FP = "fp"  # the frame pointer
UNSET = None


# --- structure ---------------------------------------------------------------------------------

def _is_jump(insn: EbpfInsn) -> bool:
    return insn.code & 0x07 in (bpfasm.E_JMP, bpfasm.E_JMP32) and insn.code & 0xF0 not in (
        bpfasm.E_CALL, bpfasm.E_EXIT)


def _is_ld_imm64(insn: EbpfInsn) -> bool:
    return insn.code == bpfasm.E_LD | bpfasm.E_DW | bpfasm.E_IMM


def check_structure(insns: list[EbpfInsn], exit_values: set[int]) -> None:
    """What the verifier checks before it runs anything, and that every exit returns a
    constant from ``exit_values``."""
    n = len(insns)
    halves = {i + 1 for i, insn in enumerate(insns) if _is_ld_imm64(insn)}
    for i in halves:
        assert i < n and insns[i] == EbpfInsn(0, 0, 0, 0, 0), f"LD_IMM64 at {i - 1}"
    successors: dict[int, list[int]] = {}
    targeted: set[int] = set()
    for i, insn in enumerate(insns):
        if i in halves:
            continue
        if insn.code == bpfasm.E_JMP | bpfasm.E_EXIT:
            successors[i] = []
        elif insn.code == bpfasm.E_JMP | bpfasm.E_JA:
            successors[i] = [i + 1 + insn.off]
        elif _is_jump(insn):
            successors[i] = [i + 1, i + 1 + insn.off]
        else:
            successors[i] = [i + 2 if _is_ld_imm64(insn) else i + 1]
        for t in successors[i]:
            assert 0 <= t < n and t not in halves, f"jump out or into LD_IMM64 at {i}"
            assert t > i, f"backward jump at {i}"
        if insn.code & 0x07 in (bpfasm.E_JMP, bpfasm.E_JMP32) and successors[i] != [i + 1]:
            targeted.update(t for t in successors[i] if t != i + 1)
    # Everything is reachable (the verifier refuses dead code).
    seen, todo = {0}, [0]
    while todo:
        for t in successors[todo.pop()]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    assert seen == set(successors), f"unreachable: {sorted(set(successors) - seen)}"
    # Each exit is reached only through the "mov32 r0, imm" just before it.
    for i, insn in enumerate(insns):
        if insn.code == bpfasm.E_JMP | bpfasm.E_EXIT:
            before = insns[i - 1]
            assert i not in targeted, f"a jump lands on the exit at {i}"
            assert before.code == bpfasm.E_ALU | bpfasm.E_MOV | bpfasm.E_K and before.dst == 0
            assert before.imm in exit_values, f"exit at {i} returns {before.imm}"


def check_tail_call(insns: list[EbpfInsn], map_fd: int, slot: int) -> None:
    calls = [i for i, insn in enumerate(insns) if insn.code == bpfasm.E_JMP | bpfasm.E_CALL]
    assert len(calls) == 1
    i = calls[0]
    assert insns[i].imm == bpfasm.BPF_FUNC_TAIL_CALL
    assert insns[i - 1] == EbpfInsn(bpfasm.E_ALU | bpfasm.E_MOV | bpfasm.E_K, 3, 0, 0, slot)
    assert insns[i - 3] == EbpfInsn(bpfasm.E_LD | bpfasm.E_DW | bpfasm.E_IMM, 2,
                                    bpfasm.BPF_PSEUDO_MAP_FD, 0, map_fd)
    assert insns[i - 2] == EbpfInsn(0, 0, 0, 0, 0)
    assert insns[i - 4] == EbpfInsn(bpfasm.E_ALU64 | bpfasm.E_MOV | bpfasm.E_X, 1, 6, 0, 0)


# --- an eBPF emulator for the instructions bpfasm emits -------------------------------------------

class Reject(Exception):
    """What the emulator raises for something the verifier or the kernel would refuse."""


def _s32(v: int) -> int:
    v &= MASK32
    return v - (1 << 32) if v & 0x80000000 else v


def _alu(op: int, dst: int, src: int, bits: int) -> int:
    mask = MASK32 if bits == 32 else MASK64
    dst, src = dst & mask, src & mask
    if op == bpfasm.E_MOV:
        return src
    if op == pf.ADD:
        return (dst + src) & mask
    if op == pf.SUB:
        return (dst - src) & mask
    if op == pf.MUL:
        return (dst * src) & mask
    if op == pf.DIV:
        return dst // src if src else 0  # eBPF: division by zero gives 0
    if op == pf.MOD:
        return dst % src if src else dst  # eBPF: modulo by zero leaves dst
    if op == pf.OR:
        return dst | src
    if op == pf.AND:
        return dst & src
    if op == pf.XOR:
        return dst ^ src
    if op == pf.LSH:
        return (dst << (src & (bits - 1))) & mask  # eBPF masks the shift count
    if op == pf.RSH:
        return dst >> (src & (bits - 1))
    if op == pf.NEG:
        return -dst & mask
    raise Reject(f"ALU op {op:#x}")


_CONDITIONS = {
    bpfasm.E_JEQ: lambda a, b: a == b, bpfasm.E_JNE: lambda a, b: a != b,
    bpfasm.E_JGT: lambda a, b: a > b, bpfasm.E_JGE: lambda a, b: a >= b,
    bpfasm.E_JLT: lambda a, b: a < b, bpfasm.E_JLE: lambda a, b: a <= b,
    bpfasm.E_JSET: lambda a, b: a & b != 0,
}


def emulate(insns: Sequence[EbpfInsn], packet: bytes, *,
            tail_call_works: bool = True) -> int | tuple[str, int]:
    """Run eBPF as the kernel would on a SCHED_CLS skb holding ``packet``: the return
    value, or ("tail call", slot) when a tail call succeeds."""
    regs: list[object] = [UNSET] * 11
    regs[1], regs[10] = CTX, FP
    stack: dict[int, int] = {}  # offset from the frame pointer -> 32-bit word

    def num(r: int) -> int:
        v = regs[r]
        if not isinstance(v, int):
            raise Reject(f"r{r} is {v!r}, not a number")
        return v

    pc = 0
    for _ in range(100_000):
        ins = insns[pc]
        pc += 1
        cls, op = ins.code & 0x07, ins.code & 0xF0
        if ins.code == bpfasm.E_LD | bpfasm.E_DW | bpfasm.E_IMM:
            if ins.src != bpfasm.BPF_PSEUDO_MAP_FD:
                raise Reject("LD_IMM64 of a plain number")
            regs[ins.dst] = ("map", ins.imm)
            pc += 1
        elif cls == bpfasm.E_LD:  # LD_ABS / LD_IND
            if regs[6] != CTX:
                raise Reject("packet load without the context in r6")
            mode, size = ins.code & 0xE0, pf.SIZES[ins.code & 0x18]
            offset = ins.imm if mode == bpfasm.E_ABS else _s32(num(ins.src) + ins.imm)
            if offset < 0:
                raise Reject(f"negative packet offset {offset} (a special offset)")
            for r in range(1, 6):
                regs[r] = UNSET
            if offset + size > len(packet):
                return 0  # the kernel ends the program with 0
            regs[0] = int.from_bytes(packet[offset:offset + size], "big")
        elif cls == bpfasm.E_LDX:
            if ins.code != bpfasm.E_LDX | bpfasm.E_MEM | bpfasm.E_W:
                raise Reject(f"load {ins.code:#x}")
            if regs[ins.src] == CTX and ins.off == bpfasm.SKB_LEN_OFFSET:
                regs[ins.dst] = len(packet)
            elif regs[ins.src] == FP:
                if ins.off not in stack:
                    raise Reject(f"read of uninitialized stack at {ins.off}")
                regs[ins.dst] = stack[ins.off]
            else:
                raise Reject(f"load from r{ins.src}")
        elif cls in (bpfasm.E_ST, bpfasm.E_STX):
            if regs[ins.dst] != FP or ins.code & 0xF8 != bpfasm.E_MEM | bpfasm.E_W:
                raise Reject("store outside the stack")
            if not -512 <= ins.off <= -4 or ins.off % 4:
                raise Reject(f"bad stack offset {ins.off}")
            stack[ins.off] = ins.imm & MASK32 if cls == bpfasm.E_ST else num(ins.src) & MASK32
        elif cls in (bpfasm.E_ALU, bpfasm.E_ALU64):
            bits = 32 if cls == bpfasm.E_ALU else 64
            if op == bpfasm.E_MOV and ins.code & bpfasm.E_X and bits == 64:
                regs[ins.dst] = regs[ins.src]  # pointers move too
                continue
            if ins.code & bpfasm.E_X:
                src = num(ins.src)
            else:
                if op in (pf.LSH, pf.RSH) and not 0 <= ins.imm < bits:
                    raise Reject(f"shift by {ins.imm}")
                if op in (pf.DIV, pf.MOD) and ins.imm == 0:
                    raise Reject("division by the constant 0")
                src = ins.imm & (MASK32 if bits == 32 else MASK64)  # 64 bits: sign-extended
            dst = 0 if op == bpfasm.E_MOV else num(ins.dst)
            regs[ins.dst] = _alu(op, dst, src, bits)
        elif cls in (bpfasm.E_JMP, bpfasm.E_JMP32):
            if ins.code == bpfasm.E_JMP | bpfasm.E_EXIT:
                return num(0)
            if ins.code == bpfasm.E_JMP | bpfasm.E_CALL:
                if ins.imm != bpfasm.BPF_FUNC_TAIL_CALL or regs[1] != CTX:
                    raise Reject("a call that is not a tail call on the context")
                prog_array, slot = regs[2], num(3)
                if not (isinstance(prog_array, tuple) and prog_array[0] == "map"):
                    raise Reject("tail call without a map")
                if tail_call_works:
                    return ("tail call", slot)
                regs[0] = -22 & MASK64  # the helper "returns" on failure
                for r in range(1, 6):
                    regs[r] = UNSET
                continue
            if op == bpfasm.E_JA:
                pc += ins.off
                continue
            mask = MASK32 if cls == bpfasm.E_JMP32 else MASK64
            a = num(ins.dst) & mask
            b = num(ins.src) & mask if ins.code & bpfasm.E_X else ins.imm & mask
            if _CONDITIONS[op](a, b):
                pc += ins.off
        else:
            raise Reject(f"instruction {ins.code:#x}")
    raise Reject("did not finish")


# --- random classic programs (also used by the kernel test) --------------------------------------

_K = st.sampled_from([0, 1, 2, 3, 4, 12, 14, 20, 31, 32, 33, 63, 0x7FFFFFFF, 0x80000000,
                      0x80000001, 0xFFFFFFFF]) | st.integers(0, MASK32)
_OFFSET = st.integers(0, 70) | st.sampled_from([0x7FFFFFFF, 0x80000000, 0xFFFFFFF0,
                                                0xFFFFFFFF])
_SIZE = st.sampled_from([pf.W, pf.H, pf.B])
_MEMK = st.integers(0, pf.MEMWORDS - 1)


@st.composite
def cbpf_programs(draw: st.DrawFn) -> list[Insn]:
    """Valid classic programs of every instruction, with forward jumps only."""
    n = draw(st.integers(0, 24))  # instructions before the final return
    body: list[Insn] = []
    for i in range(n):
        room = n - i - 1  # how far forward a jump may go and still land in the program
        kind = draw(st.sampled_from(["ld", "ldx", "st", "alu", "jmp", "ja", "misc", "ret"]))
        if kind == "ld":
            mode = draw(st.sampled_from([pf.ABS, pf.IND, pf.IMM, pf.MEM, pf.LEN]))
            if mode in (pf.ABS, pf.IND):
                insn = Insn(pf.LD | draw(_SIZE) | mode, 0, 0, draw(_OFFSET))
            else:
                k = draw(_MEMK if mode == pf.MEM else _K)
                insn = Insn(pf.LD | pf.W | mode, 0, 0, 0 if mode == pf.LEN else k)
        elif kind == "ldx":
            mode = draw(st.sampled_from([pf.IMM, pf.MEM, pf.LEN, pf.MSH]))
            if mode == pf.MSH:
                insn = Insn(pf.LDX | pf.B | pf.MSH, 0, 0, draw(_OFFSET))
            elif mode == pf.IMM:  # X is an offset for indirect loads: keep it small often
                insn = Insn(pf.LDX | pf.W | pf.IMM, 0, 0, draw(st.integers(0, 40) | _K))
            else:
                insn = Insn(pf.LDX | pf.W | mode, 0, 0, 0 if mode == pf.LEN else draw(_MEMK))
        elif kind == "st":
            insn = Insn(draw(st.sampled_from([pf.ST, pf.STX])), 0, 0, draw(_MEMK))
        elif kind == "alu":
            op = draw(st.sampled_from([*pf.ALU_OPS, pf.NEG]))
            src = pf.K if op == pf.NEG else draw(st.sampled_from([pf.K, pf.X]))
            insn = Insn(pf.ALU | op | src, 0, 0, draw(_K) if src == pf.K else 0)
        elif kind == "jmp":
            src = draw(st.sampled_from([pf.K, pf.X]))
            insn = Insn(pf.JMP | draw(st.sampled_from(pf.JUMP_OPS)) | src,
                        draw(st.integers(0, min(room, 255))),
                        draw(st.integers(0, min(room, 255))), draw(_K) if src == pf.K else 0)
        elif kind == "ja":
            insn = Insn(pf.JMP | pf.JA, 0, 0, draw(st.integers(0, room)))
        elif kind == "misc":
            insn = Insn(pf.MISC | draw(st.sampled_from([pf.TAX, pf.TXA])), 0, 0, 0)
        else:
            insn = _ret(draw)
        body.append(insn)
    return [*body, _ret(draw)]


def _ret(draw: st.DrawFn) -> Insn:
    if draw(st.booleans()):
        return Insn(pf.RET | pf.RET_A, 0, 0, 0)
    return Insn(pf.RET | pf.K, 0, 0, draw(st.sampled_from([0, 1, 0x40000, MASK32])))


PACKETS = st.binary(min_size=14, max_size=96)  # the kernel's test run wants an Ethernet header


# --- tests -------------------------------------------------------------------------------------

@pytest.mark.usefixtures("tcpdump")
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_tcpdump_programs_translate_and_agree(expression: str) -> None:
    program = compiled(expression)
    if any(insn.code == pf.JMP | pf.JA and insn.k & 0x80000000 for insn in program):
        with pytest.raises(ValueError, match="backward jump"):
            translate(program, ReturnVerdict())
        return
    test_mode = decode(translate(program, ReturnVerdict()))
    check_structure(test_mode, {0, 1})
    production = decode(translate(program, TailCall(map_fd=7, slot=3)))
    check_structure(production, {0})
    check_tail_call(production, 7, 3)
    for frame in CORPUS:
        if len(frame.data) < 14:
            continue
        want = run(program, frame.data) != 0
        assert emulate(test_mode, frame.data) == int(want), frame.name
        assert emulate(production, frame.data) == (("tail call", 3) if want else 0)
        assert emulate(production, frame.data, tail_call_works=False) == 0


@settings(max_examples=300, deadline=None)
@given(program=cbpf_programs(), packets=st.lists(PACKETS, min_size=1, max_size=4))
def test_random_programs_agree(program: list[Insn], packets: list[bytes]) -> None:
    test_mode = decode(translate(program, ReturnVerdict()))
    check_structure(test_mode, {0, 1})
    production = decode(translate(program, TailCall(map_fd=3, slot=0)))
    check_structure(production, {0})
    for packet in packets:
        want = run(program, packet) != 0
        assert emulate(test_mode, packet) == int(want)
        assert emulate(production, packet) == (("tail call", 0) if want else 0)


def test_accept_all_is_a_plain_tail_call() -> None:
    insns = decode(translate(pf.ACCEPT_ALL, TailCall(map_fd=42, slot=9)))
    check_structure(insns, {0})
    check_tail_call(insns, 42, 9)
    assert emulate(insns, bytes(14)) == ("tail call", 9)
    assert len(insns) == 3 + 7  # prologue, then the tail call epilogue only


def test_only_the_epilogues_in_use_are_emitted() -> None:
    # "ret #0" only: no match epilogue, hence no tail call (it would be dead code).
    insns = decode(translate([Insn(pf.RET, 0, 0, 0)], TailCall(map_fd=5)))
    check_structure(insns, {0})
    assert not any(i.code == bpfasm.E_JMP | bpfasm.E_CALL for i in insns)


def test_dead_code_after_an_always_rejecting_load_is_dropped() -> None:
    program = [Insn(pf.LD | pf.B | pf.ABS, 0, 0, 0x80000000), Insn(pf.ALU | pf.ADD, 0, 0, 1),
               Insn(pf.RET | pf.RET_A, 0, 0, 0)]
    insns = decode(translate(program, ReturnVerdict()))
    check_structure(insns, {0, 1})
    assert emulate(insns, bytes(100)) == 0 == run(program, bytes(100))


def test_unsigned_compares_use_32_bit_jumps() -> None:
    # A = 0x80000000 > 0x7fffffff unsigned; a 64-bit compare with a sign-extended
    # immediate would say the opposite.
    program = [Insn(pf.LD | pf.W | pf.ABS, 0, 0, 0), Insn(pf.JMP | pf.JGT, 0, 1, 0x7FFFFFFF),
               Insn(pf.RET, 0, 0, 1), Insn(pf.RET, 0, 0, 0)]
    packet = b"\x80\x00\x00\x00" + bytes(10)
    insns = decode(translate(program, ReturnVerdict()))
    assert emulate(insns, packet) == 1 == run(program, packet)
    assert any(i.code & 0x07 == bpfasm.E_JMP32 for i in insns)


@pytest.mark.parametrize(("program", "why"), [
    ([Insn(pf.JMP | pf.JA, 0, 0, 1), Insn(pf.RET, 0, 0, 1),
      Insn(pf.JMP | pf.JA, 0, 0, MASK32 - 1), Insn(pf.RET, 0, 0, 0)], "backward jump at 2"),
    ([Insn(pf.LD | pf.IMM, 0, 0, 0)] * pf.MAXINSNS + [Insn(pf.RET, 0, 0, 1)],
     "4097 instructions"),
    ([Insn(pf.RET | pf.X, 0, 0, 0)], "unknown cBPF instruction"),
    ([Insn(0x07 | 0x40, 0, 0, 0), Insn(pf.RET, 0, 0, 0)], "unknown cBPF instruction"),
    ([Insn(pf.LD | pf.IMM, 0, 0, 0)], "does not end with a return"),
    ([], "0 instructions"),
])
def test_untranslatable_programs(program: list[Insn], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        translate(program, ReturnVerdict())


@pytest.mark.usefixtures("tcpdump")
def test_protochain_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="protochain"):
        translate(compiled("ip6 protochain 6"), ReturnVerdict())


def long_program(loads: int) -> list[Insn]:
    """A jump over ``loads`` instructions "ldx 4*([14]&0xf)" (6 eBPF insns each, one of
    them a packet load that the kernel expands again): "ret #1" if the first byte is 0."""
    return [Insn(pf.LD | pf.B | pf.ABS, 0, 0, 0),
            Insn(pf.JMP | pf.JEQ, 0, 1, 0),
            Insn(pf.JMP | pf.JA, 0, 0, loads + 1),  # to the last "ret #1"
            *[Insn(pf.LDX | pf.B | pf.MSH, 0, 0, 14)] * loads,
            Insn(pf.RET, 0, 0, 0), Insn(pf.RET, 0, 0, 1)]


def longest_translatable() -> int:
    """The most loads ``long_program`` may have and still translate (binary search)."""
    low, high = 1, pf.MAXINSNS - 5
    while low < high:
        mid = (low + high + 1) // 2
        try:
            translate(long_program(mid), ReturnVerdict())
            low = mid
        except ValueError:
            high = mid - 1
    return low


def test_too_long_for_the_kernel_is_refused() -> None:
    # The longest classic program of this shape would fit eBPF's 16-bit offsets as we
    # write it (6 * 4091 insns), but not once the kernel expands each packet load.
    with pytest.raises(ValueError, match="too long for the kernel"):
        translate(long_program(pf.MAXINSNS - 5), ReturnVerdict())
    most = longest_translatable()
    assert 1000 < most < pf.MAXINSNS - 5
    with pytest.raises(ValueError, match="too long for the kernel"):
        translate(long_program(most + 1), ReturnVerdict())
    program = long_program(most)
    insns = decode(translate(program, ReturnVerdict()))
    check_structure(insns, {0, 1})
    for packet in (bytes(20), b"\x01" + bytes(19)):
        assert emulate(insns, packet) == run(program, packet)
    assert run(program, bytes(20)) == 1 and run(program, b"\x01" + bytes(19)) == 0


def test_bad_tail_call_target() -> None:
    with pytest.raises(ValueError, match="tail call"):
        translate(pf.ACCEPT_ALL, TailCall(map_fd=-1))


def test_decode_round_trip() -> None:
    raw = translate(pf.ACCEPT_ALL, ReturnVerdict())
    assert len(raw) % 8 == 0
    insns = decode(raw)
    assert insns[0] == EbpfInsn(bpfasm.E_ALU64 | bpfasm.E_MOV | bpfasm.E_X, 6, 1, 0, 0)
    with pytest.raises(ValueError, match="whole number"):
        decode(raw[:-1])


def test_verifier_complaint_is_the_last_telling_line() -> None:
    # How bpfsys.prog_load picks its one line out of a verifier log (pure: no kernel here).
    from ecapture.live.bpfsys import verifier_complaint

    log = ("func#0 @0\n0: R1=ctx() R10=fp0\n0: (95) exit\nR0 !read_ok\n"
           "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 "
           "peak_states 0 mark_read 0\n\nverification time 12 usec\nstack depth 0\n")
    assert verifier_complaint(log) == "R0 !read_ok"
    assert verifier_complaint("") == ""

"""Translated filters in the real kernel: the verifier accepts them, and BPF_PROG_TEST_RUN
gives, packet by packet, the verdict of the cBPF interpreter (which the unit tests hold to
tcpdump's own). Same corpus, expressions and random programs as the unit tests
(tests/unit/test_packetfilter.py, tests/unit/test_bpfasm.py).

Root is needed (bpf(2)); the directory's conftest marks every test here live.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecapture import packetfilter as pf
from ecapture.bpfasm import ReturnVerdict, TailCall, translate
from ecapture.errors import AttachError
from ecapture.live import bpfsys
from ecapture.packetfilter import Insn, run

# The unit tests' corpus and generators, imported as pytest imports them (by file name, from
# their directory), so that a session running both shares one module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_bpfasm import PACKETS, cbpf_programs, long_program, longest_translatable  # noqa: E402
from test_packetfilter import (  # noqa: E402
    CORPUS,
    EXPRESSIONS,
    Frame,
    compiled,
    frames,
    tcpdump,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.ecapture_module("tls")  # the filter of the tls module's -m pcap

SCHED_CLS = bpfsys.BPF_PROG_TYPE_SCHED_CLS
TAIL_TARGET_RETVAL = 77  # what the program in the PROG_ARRAY slot returns
SLOT = 2


def _has_backward_jump(program: pf.Program) -> bool:
    return any(insn.code == pf.JMP | pf.JA and insn.k & 0x80000000 for insn in program)


def kernel_verdict(fd: int, data: bytes) -> int:
    return bpfsys.prog_test_run(fd, data)


def kernel_takes(data: bytes) -> bool:
    """Whether BPF_PROG_TEST_RUN takes this frame for a SCHED_CLS program: an Ethernet
    header, and for IPv4 and IPv6 their whole fixed header (the kernel reads the addresses
    before it runs the program)."""
    ethertype = int.from_bytes(data[12:14], "big") if len(data) >= 14 else None
    need = {0x0800: 14 + 20, 0x86DD: 14 + 40}.get(ethertype or 0, 14)
    return ethertype is not None and len(data) >= need


@pytest.fixture(scope="module")
def loaded(tcpdump: str) -> Iterator[dict[str, int]]:  # noqa: F811
    """expression -> fd of its test-epilogue program, for the expressions the kernel
    can run (protochain's backward jumps stay in user space)."""
    fds: dict[str, int] = {}
    try:
        for expression in EXPRESSIONS:
            program = compiled(expression)
            if not _has_backward_jump(program):
                fds[expression] = bpfsys.prog_load(
                    SCHED_CLS, translate(program, ReturnVerdict()), name="pf_test")
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.fixture
def prog_array() -> Iterator[int]:
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 4, name="pf_jump")
    yield fd
    os.close(fd)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_kernel_agrees_with_run_on_the_corpus(expression: str,
                                              loaded: dict[str, int]) -> None:
    program = compiled(expression)
    if _has_backward_jump(program):
        assert "protochain" in expression
        with pytest.raises(ValueError, match="backward jump"):
            translate(program, ReturnVerdict())
        return
    fd = loaded[expression]
    frames_run = [f for f in CORPUS if kernel_takes(f.data)]
    assert len(frames_run) > 30
    # The kernel sees the captured bytes as the whole packet: len is their length.
    wrong = [f.name for f in frames_run
             if kernel_verdict(fd, f.data) != int(run(program, f.data) != 0)]
    assert wrong == []


@settings(max_examples=50, deadline=None)
@given(generated=st.lists(frames(), min_size=1, max_size=20))
def test_kernel_agrees_with_run_on_generated_frames(generated: list[Frame],
                                                   loaded: dict[str, int]) -> None:
    packets = [f.data for f in generated if kernel_takes(f.data)]
    for expression, fd in loaded.items():
        program = compiled(expression)
        for data in packets:
            assert kernel_verdict(fd, data) == int(run(program, data) != 0), (expression,
                                                                              data.hex())


@settings(max_examples=300, deadline=None)
@given(program=cbpf_programs(), packets=st.lists(PACKETS, min_size=1, max_size=4))
def test_kernel_agrees_with_run_on_random_programs(program: list[Insn],
                                                   packets: list[bytes]) -> None:
    fd = bpfsys.prog_load(SCHED_CLS, translate(program, ReturnVerdict()), name="pf_random")
    try:
        for data in filter(kernel_takes, packets):
            assert kernel_verdict(fd, data) == int(run(program, data) != 0), data.hex()
    finally:
        os.close(fd)


def _tail_target() -> int:
    """A SCHED_CLS program that returns TAIL_TARGET_RETVAL: r0 = 77; exit."""
    insns = struct.pack("<BBhi", 0xB4, 0, 0, TAIL_TARGET_RETVAL) + struct.pack("<BBhi", 0x95,
                                                                               0, 0, 0)
    return bpfsys.prog_load(SCHED_CLS, insns, name="pf_target")


@pytest.mark.parametrize("expression", ["", "tcp port 443", "ip6 or arp",
                                        "(ip[2:2] + 1000) / (ip[8] - 64) > 10",
                                        "vlan 42 and tcp"])
def test_production_epilogue_tail_calls_on_a_match(expression: str, prog_array: int) -> None:
    program = compiled(expression) if expression else pf.ACCEPT_ALL
    fd = bpfsys.prog_load(SCHED_CLS, translate(program, TailCall(prog_array, SLOT)),
                          name="pf_prod")
    target = _tail_target()
    try:
        frames_run = [f for f in CORPUS if kernel_takes(f.data)]
        # Empty slot: the tail call fails and the filter returns TC_ACT_OK (0) regardless.
        assert {kernel_verdict(fd, f.data) for f in frames_run} == {0}
        bpfsys.map_update(prog_array, struct.pack("<I", SLOT), struct.pack("<I", target))
        got = [kernel_verdict(fd, f.data) for f in frames_run]
        want = [TAIL_TARGET_RETVAL if run(program, f.data) else 0 for f in frames_run]
        assert got == want
        assert TAIL_TARGET_RETVAL in got and (expression == "" or 0 in got)
    finally:
        os.close(target)
        os.close(fd)


def test_every_expression_passes_the_verifier_in_production(loaded: dict[str, int],
                                                            prog_array: int) -> None:
    for expression in loaded:
        fd = bpfsys.prog_load(SCHED_CLS, translate(compiled(expression),
                                                   TailCall(prog_array, SLOT)),
                              name="pf_prod")
        os.close(fd)


def test_longest_translation_loads() -> None:
    """bpfasm's bound on how far the kernel expands a program is safe: the longest program
    it accepts of a load-heavy shape passes the verifier and runs right."""
    program = long_program(longest_translatable())
    fd = bpfsys.prog_load(SCHED_CLS, translate(program, ReturnVerdict()), name="pf_long")
    try:
        for data in (bytes(20), b"\x01" + bytes(19)):
            assert kernel_verdict(fd, data) == run(program, data)
    finally:
        os.close(fd)


def test_verifier_refusal_is_one_line() -> None:
    # exit without setting r0: the verifier says "R0 !read_ok".
    with pytest.raises(AttachError, match=r"R0 !read_ok") as info:
        bpfsys.prog_load(SCHED_CLS, struct.pack("<BBhi", 0x95, 0, 0, 0), name="pf_bad")
    assert "\n" not in str(info.value) and "pf_bad" in str(info.value)


def test_test_run_errors_are_attach_errors() -> None:
    fd = bpfsys.prog_load(SCHED_CLS, translate(pf.ACCEPT_ALL, ReturnVerdict()), name="pf_ok")
    try:
        assert bpfsys.prog_test_run(fd, bytes(14)) == 1
        for untestable in (bytes(10), bytes(12) + b"\x08\x00" + bytes(19),
                           bytes(12) + b"\x86\xdd" + bytes(39)):
            assert not kernel_takes(untestable)
            with pytest.raises(AttachError, match=f"{len(untestable)}-byte packet"):
                bpfsys.prog_test_run(fd, untestable)
        for fine in (bytes(12) + b"\x08\x00" + bytes(20), bytes(12) + b"\x86\xdd" + bytes(40)):
            assert kernel_takes(fine) and bpfsys.prog_test_run(fd, fine) == 1
    finally:
        os.close(fd)

"""Uprobes as ecapture makes them, beside another tool's on the same instruction.

The kernel keeps one uprobe per instruction of a file and refuses a second consumer whose
USDT semaphore offset differs. ecapture's uprobes carry none (0), as every loader but bcc
0.26's Python bindings makes them, so they go on beside another tool's; and each fires once
per call. Ground truth: a child process calls libcrypto's ``OpenSSL_version_num()``
exactly PRIME times, and only its calls are counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from ecapture.errors import AttachError
from ecapture.live.bccload import load_bcc
from ecapture.live.bpfsys import BPF_TRACE_UPROBE_MULTI, link_create_uprobe_multi
from ecapture.live.uprobes import REF_CTR_CLASH, Uprobes, has_uprobe_links
from ecapture.testing.containers import host_library

PRIME = 23
FUNCTION = "OpenSSL_version_num"

# hits[0]: the pid to count, written by the test; hits[1], hits[2]: calls seen by each probe
PROGRAM = r"""
BPF_ARRAY(hits, u64, 3);

static int count(int slot) {
    int key = 0;
    u64 *target = hits.lookup(&key);
    if (!target || *target != bpf_get_current_pid_tgid() >> 32)
        return 0;
    u64 *n = hits.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

int first(struct pt_regs *ctx) { return count(1); }
int second(struct pt_regs *ctx) { return count(2); }
"""

CALLER = f"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
sys.stdin.readline()  # the probes are on
for _ in range({PRIME}):
    lib.{FUNCTION}()
"""


def run_caller(bpf: Any, libcrypto: str) -> tuple[int, int]:
    """Calls counted by the probes "first" and "second" while a child calls PRIME times."""
    child = subprocess.Popen([sys.executable, "-c", CALLER, libcrypto], stdin=subprocess.PIPE)
    hits = bpf[b"hits"]
    hits[hits.Key(0)] = hits.Leaf(child.pid)
    assert child.stdin is not None
    child.stdin.write(b"go\n")
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    return hits[hits.Key(1)].value, hits[hits.Key(2)].value


@pytest.fixture
def bpf() -> Any:
    program = load_bcc().BPF(text=PROGRAM.encode())
    yield program
    program.cleanup()


def test_a_perf_uprobe_goes_on_beside_a_link(bpf: Any) -> None:
    """The path of kernels without uprobe_multi links: a perf-event uprobe, then (where
    the kernel has them) a link on the same instruction, as another tool would make it.
    The kernel takes the link only if the perf uprobe has no semaphore offset."""
    libcrypto = str(host_library("libcrypto.so.3"))
    perf = Uprobes(supported=False)
    perf.attach(bpf, "first", libcrypto, FUNCTION, None, False)
    links = has_uprobe_links()
    if links:
        other = Uprobes(supported=True)
        other.attach(bpf, "second", libcrypto, FUNCTION, None, False)
    try:
        assert run_caller(bpf, libcrypto) == (PRIME, PRIME if links else 0)
    finally:
        if links:
            other.close()


def test_a_clash_is_said_in_one_line(bpf: Any) -> None:
    """A uprobe on the same instruction with a semaphore offset (what bcc 0.26's Python
    bindings may leave): ecapture's attach is refused with the reason, not a bare EINVAL."""
    if not has_uprobe_links():
        pytest.skip("this kernel has no uprobe_multi links: the clash is shown by the "
                    "perf-event path alone, with the same words")
    libcrypto = str(host_library("libcrypto.so.3"))
    probes = Uprobes(supported=True)
    path, offset = probes._offset(bpf, libcrypto, FUNCTION, None)
    prog = bpf.load_func(b"first", bpf.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    # The other tool's uprobe: a link with a semaphore offset of 6, the value bcc 0.26's
    # bindings were seen to leave. It is in the ELF header, which no process maps writable,
    # so the kernel never writes there.
    clashing = link_create_uprobe_multi(prog.fd, path.decode(), [offset], ref_ctr=6)
    try:
        with pytest.raises(AttachError) as refused:
            probes.attach(bpf, "second", libcrypto, FUNCTION, None, False)
        assert str(refused.value) == REF_CTR_CLASH
    finally:
        os.close(clashing)
        probes.close()

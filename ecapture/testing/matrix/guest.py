"""Boot a kernel under qemu with virtme-ng and run one command in it (local runner only).

The guest shares the host's root filesystem read-only over virtiofs, so it runs the very
interpreter, package and tests of the host; results come back through a ``--rwdir``.
Software emulation only (KVM is unusable here): one vCPU, because TCG with two showed rare
early-boot oopses, and one retry when vng exits 255 (the guest did not come up).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from pathlib import Path

from ecapture.testing.matrix.kernels import CACHE, Kernel

GUEST_FAILED = 255


def vng_command(kernel: Kernel, command: str, rwdirs: list[Path], cache: Path = CACHE,
                memory: str = "2G") -> list[str]:
    cmd = ["vng", "--run", str(kernel.vmlinuz), "--disable-kvm", "--cpus", "1",
           "--memory", memory,
           # Masked udev rules: stock rules modprobe every modalias, seconds under TCG.
           "--rodir", f"/etc/udev/rules.d={cache / 'udev-min.d'}"]
    for d in rwdirs:
        cmd += ["--rwdir", str(d)]
    return [*cmd, "--exec", command]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(kernel: Kernel, command: str, rwdirs: list[Path], log: Path, cache: Path = CACHE,
        timeout: float = 7200, retries: int = 1) -> int:
    """The command's exit status inside the guest (vng passes it through), or 255 when the
    guest failed to boot twice. Console and command output go to ``log`` through a pipe:
    qemu truncates a regular file given as its stdout."""
    env = {**os.environ,
           "PATH": f"{cache / 'vfs/bin'}:{cache / 'vng/bin'}:{os.environ.get('PATH', '')}"}
    argv = vng_command(kernel, command, rwdirs, cache)
    rc = GUEST_FAILED
    with open(log, "w", encoding="utf-8", errors="replace") as f:
        for attempt in range(1 + retries):
            f.write(f"$ {shlex.join(argv)}  # attempt {attempt + 1}\n")
            f.flush()
            # A session of its own, so that a timeout stops qemu too: killing vng alone
            # left the guest running, and its CPU time slowed every later row.
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                out, _ = proc.communicate()
                f.write(out.decode(errors="replace"))
                f.write(f"timed out after {timeout:.0f} s\n")
                return GUEST_FAILED
            except BaseException:  # ^C: the guest goes with us
                _kill(proc)
                raise
            f.write(out.decode(errors="replace"))
            rc = proc.returncode
            f.write(f"\n# exit {rc}\n")
            if rc != GUEST_FAILED:
                break
    return rc

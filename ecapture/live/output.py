"""The output of a live capture, in a process of its own.

The drain thread writes every batch to a recording first: the user's ``--record`` file, or
else a spool file that no directory names. The output process is ``ecapture replay`` of
that recording while it grows (:mod:`ecapture.follow`): decoding, parsing and printing run
there, in parallel, and may lag behind the capture without costing it anything; the lag
is the distance between what was written and what the output process has read.

A spool that nobody keeps would grow with the capture, so the part the output has read is
given back to the file system (punched out) as it goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from ecapture.errors import RecordWriteError

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
PUNCH_EVERY = 64 << 20  # give back read spool space in steps of this many bytes


def _spool() -> int:
    """An unnamed file in the temporary directory, readable by us only: O_TMPFILE where
    the file system has it (overlayfs only since 6.6), else a file unlinked at once."""
    directory = tempfile.gettempdir()
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        pass
    try:
        fd, path = tempfile.mkstemp(prefix="ecapture-spool-", dir=directory)
        os.unlink(path)
        return fd
    except OSError as e:
        raise RecordWriteError(f"cannot create a spool file in {directory} for the output: "
                               f"{e.strerror or e} (set TMPDIR, or use --record FILE)") from e


class OutputProcess:
    """``ecapture replay`` of the recording being written, with the given output options.

    ``write_fd`` is where the recording's writer should write (None: the caller creates
    ``record`` itself). Call :meth:`start` once the file exists, :meth:`notify` after each
    batch is written, :meth:`finish` once the recording is closed.
    """

    def __init__(self, record: str | None, output_args: Sequence[str]):
        self.record = record
        self.output_args = list(output_args)
        self.write_fd: int | None = None if record else _spool()
        self.proc: subprocess.Popen[bytes] | None = None
        self._child_read_fd = -1  # the recording's fd number in the output process
        self._notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_w, False)
        self._summary_r, self._summary_w = os.pipe()
        self._punched = 0

    def start(self) -> None:
        """Start the output process on the recording (which must exist by now)."""
        path = self.record if self.record else f"/proc/self/fd/{self.write_fd}"
        # Its own open file: its own offset, which tells how far the output has read.
        read_fd = os.open(path, os.O_RDONLY)
        fds = (read_fd, self._notify_r, self._summary_w)
        cmd = [sys.executable, "-m", "ecapture", "replay", "--follow-fd", str(fds[0]),
               "--notify-fd", str(fds[1]), "--summary-fd", str(fds[2]), *self.output_args]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
            self._notify_r = self._summary_w = -1
        self._child_read_fd = read_fd

    def notify(self) -> None:
        """A batch was written: wake the output process if it waits."""
        if self._notify_w < 0:
            return
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self._notify_w, b"\0")

    def position(self) -> int | None:
        """How far the output process has read the recording (None once it is gone)."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/fdinfo/{self._child_read_fd}") as f:
                for line in f:
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def give_back(self) -> None:
        """Punch out the spool the output process has read, in PUNCH_EVERY steps."""
        if self.write_fd is None:
            return
        pos = self.position()
        if pos is None or pos - self._punched < PUNCH_EVERY:
            return
        upto = pos - pos % PUNCH_EVERY
        libc = ctypes.CDLL(None, use_errno=True)
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if libc.fallocate(self.write_fd, mode, ctypes.c_long(0), ctypes.c_long(upto)) == 0:
            self._punched = upto
        else:  # a file system without holes: the spool keeps its size, nothing is lost
            self._punched = 1 << 62

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def finish(self, timeout: float | None = None) -> tuple[int, str]:
        """The recording is closed: let the output process read to its end and exit.
        Returns its exit status and the summary line it reported."""
        for fd in (self._notify_w, self._notify_r, self._summary_w):
            if fd >= 0:
                os.close(fd)
        self._notify_w = self._notify_r = self._summary_w = -1
        status = 0
        if self.proc is not None:
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                status = self.proc.wait()
        if self._summary_r < 0:
            return status, ""
        with os.fdopen(self._summary_r, "r", encoding="utf-8", errors="replace") as f:
            summary = f.read().strip()
        self._summary_r = -1
        return status, summary

    def stop(self) -> None:
        """Stop printing now (a second Ctrl-C): the recording is already complete."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

"""Uprobes as BPF links where the kernel has them (uprobe_multi, Linux 6.6+), else as
perf-event uprobes; and detaching either kind from several threads at once.

Why links: closing a perf-event uprobe waits for RCU grace periods while holding the
kernel's one event_mutex, about 0.2 s a probe on 6.x kernels, so the 800 probes of 50
containers' copies of libssl took minutes to detach. Closing a link waits for the same
grace periods without that mutex: closed from many threads, they share the waits, and
the 800 go in about a second. Attaching one is a single bpf(2) call, too.

Why not bcc's attach_uprobe for perf-event uprobes: the Python bindings of bcc 0.26 (Debian
12's) call libbcc's bpf_attach_uprobe() without its last argument, the USDT semaphore's
offset, so the kernel gets whatever the stack held there: a counter it increments in every
process that maps the file, wherever that offset falls in a writable mapping of it, and a
uprobe that no other one on the same instruction matches (the kernel refuses those with
EINVAL and logs "ref_ctr_offset mismatch").

Live layer: bcc loads the programs; bpf(2) makes the links.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ecapture.errors import AttachError
from ecapture.live.bpfsys import (
    BPF_PROG_TYPE_KPROBE,
    BPF_TRACE_UPROBE_MULTI,
    link_create_uprobe_multi,
    prog_load,
)
from ecapture.targets import quick_build_id

#: threads that close probes at the end: each close mostly waits for the kernel
DETACH_THREADS = 32


#: "r0 = 0; exit": a program for the kernel to accept, never run
_RETURN_0 = bytes.fromhex("b700000000000000" "9500000000000000")


def has_uprobe_links() -> bool:
    """Whether this kernel makes uprobe_multi links: a link asked for on a file that does
    not exist fails for the file (ENOENT) where they exist, for the request elsewhere."""
    try:
        prog = prog_load(BPF_PROG_TYPE_KPROBE, _RETURN_0, name="ecapture_probe",
                         expected_attach_type=BPF_TRACE_UPROBE_MULTI)
    except AttachError:
        return False
    try:
        link = link_create_uprobe_multi(prog, "/nonexistent/ecapture-uprobe-links", [0])
    except OSError as e:
        return e.errno == errno.ENOENT
    finally:
        os.close(prog)
    os.close(link)  # no kernel makes one there; do not keep it if one did
    return False


#: the kernel's refusal of a uprobe where another one is on the same instruction with
#: another USDT semaphore offset: most often a tool using bcc 0.26's Python bindings
REF_CTR_CLASH = (
    "the kernel refused it (EINVAL): most often another tool has a uprobe on this same "
    "instruction with a USDT semaphore offset, which bcc 0.26's Python bindings set by "
    "mistake (the kernel log says \"ref_ctr_offset mismatch\"); stop that tool "
    "(sslsniff-bpfcc, an older ecapture, ...) and start again")


class Uprobes:
    """The uprobes of one session: links where ``supported``, else perf-event uprobes
    that bcc's cleanup detaches (:func:`detach_bcc_uprobes` first, in parallel)."""

    def __init__(self, supported: bool = False) -> None:
        self.fds: list[int] = []
        self.supported = supported
        # A container's copy is most often the very build of a file attached already: its
        # offsets are known, and the late attach that races a new process's first call
        # skips bcc's read of the file's symbol tables.
        self._build_ids: dict[str, str | None] = {}
        self._offsets: dict[tuple[str, str | None, int | None], tuple[bytes, int]] = {}

    def attach(self, bpf: Any, fn: str, library: str, symbol: str | None,
               address: int | None, ret: bool) -> None:
        """Attach bcc function ``fn`` at ``symbol`` (or virtual ``address``) of
        ``library``. Failures raise: AttachError for a clash with another tool's uprobe,
        else as bcc's own attach would."""
        path, offset = self._offset(bpf, library, symbol, address)
        if not self.supported:
            attach_perf_uprobe(bpf, fn, path, offset, ret)
            return
        prog = bpf.load_func(fn.encode(), bpf.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        try:
            link = link_create_uprobe_multi(prog.fd, os.fsdecode(path), [offset], ret)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise AttachError(REF_CTR_CLASH) from None
            raise
        self.fds.append(link)

    def _offset(self, bpf: Any, library: str, symbol: str | None, address: int | None
                ) -> tuple[bytes, int]:
        """bcc's own lookup of the file offset its uprobes would use (raising as they
        would), once per build of a file."""
        if library not in self._build_ids:
            self._build_ids[library] = quick_build_id(library)
        build = self._build_ids[library]
        key = (build, symbol, address) if build else None
        if key is not None and key in self._offsets:
            return library.encode(), self._offsets[key][1]
        path, offset = bpf._check_path_symbol(library.encode(), (symbol or "").encode(),
                                              address, -1)
        if key is not None:
            self._offsets[key] = (path, offset)
        return path, offset

    def close(self) -> None:
        """Detach every link, many at a time."""
        fds, self.fds = self.fds, []
        _in_parallel(_close_fd, fds)


@functools.cache
def _bpf_attach_uprobe() -> Any:
    """libbcc's bpf_attach_uprobe() with all of its arguments typed, through our own handle
    on the library: bcc's own binding is left as it is."""
    from ecapture.live.bccload import load_bcc

    attach = ctypes.CDLL(load_bcc().libbcc.lib._name, use_errno=True).bpf_attach_uprobe
    attach.restype = ctypes.c_int
    attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_ulonglong, ctypes.c_int, ctypes.c_uint32]
    return attach


def attach_perf_uprobe(bpf: Any, fn: str, path: bytes, offset: int, ret: bool) -> None:
    """What bcc's attach_uprobe/attach_uretprobe do, with the USDT semaphore offset given
    (0: none) that bcc 0.26's bindings leave to chance; bcc's bookkeeping takes the event,
    so that its detach and cleanup work as for its own."""
    prog = bpf.load_func(fn.encode(), bpf.KPROBE)
    name = bpf._get_uprobe_evname(b"r" if ret else b"p", path, offset, -1)
    fd = _bpf_attach_uprobe()(prog.fd, 1 if ret else 0, name, path, offset, -1, 0)
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            raise AttachError(REF_CTR_CLASH)
        raise OSError(err, f"cannot attach a {'uretprobe' if ret else 'uprobe'}: "
                           f"{os.strerror(err)}")
    bpf._add_uprobe_fd(name, fd)


def detach_bcc_uprobes(bpf: Any) -> None:
    """Detach bcc's perf-event uprobes from several threads before its cleanup does it one
    by one: the kernel serialises most of each close, not all of it."""
    _in_parallel(lambda name: _quietly(bpf.detach_uprobe_event, name), list(bpf.uprobe_fds))


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _quietly(fn: Any, *args: Any) -> None:
    # bcc's cleanup detaches what is left and says why it cannot.
    with contextlib.suppress(Exception):
        fn(*args)


def _in_parallel(fn: Any, items: list[Any]) -> None:
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(min(DETACH_THREADS, len(items)),
                            thread_name_prefix="ecapture-detach") as pool:
        list(pool.map(fn, items))

"""Minimal bpf(2) wrappers over ctypes: load a program, test-run it, create and fill maps.

Rule of this module: thin system calls, no policy. Each function fills a ``union bpf_attr``
(the kernel's stable ABI; fields we do not set stay zero), calls bpf(2) and turns a failure
into a one-line :class:`~ecapture.errors.AttachError`. bcc is not needed for any of this.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import struct

from ecapture.errors import AttachError
from ecapture.live.prereq import _NR_BPF

# Commands and types from <linux/bpf.h>.
BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE_PROG_ARRAY = 3

BPF_ANY = 0

_ATTR_SIZE = 128  # larger than every layout used here; the kernel checks the tail is zero
_OBJ_NAME_LEN = 16
_LOG_SIZE = 4 << 20  # enough for the verifier's log of any program bpfasm produces

_libc: ctypes.CDLL | None = None


def _syscall_number() -> int:
    machine = platform.machine()
    nr = _NR_BPF.get(machine)
    if nr is None:
        raise AttachError(f"bpf(2): unknown system call number on {machine}")
    return nr


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(cmd, attr, sizeof attr): the result, or -errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
    ret = int(_libc.syscall(ctypes.c_long(_syscall_number()), ctypes.c_long(cmd), attr,
                            ctypes.c_ulong(len(attr))))
    return ret if ret >= 0 else -ctypes.get_errno()


def _obj_name(name: str) -> bytes:
    """The kernel accepts letters, digits, '_' and '.' in object names, up to 15 chars."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[:_OBJ_NAME_LEN - 1].encode()


def _strerror(err: int) -> str:
    return f"{os.strerror(err)} (errno {err})"


def verifier_complaint(log: str) -> str:
    """The last line of a verifier log that says what went wrong: not the statistics
    ("processed N insns ...", "verification time ...") the verifier prints last."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line and not line.startswith(("processed ", "verification time",
                                         "stack depth", "-- END PROG LOAD LOG --")):
            return line
    return ""


def prog_load(prog_type: int, insns: bytes, license: str = "GPL",
              name: str = "ecapture") -> int:
    """Load eBPF instructions; returns the program's fd (the caller closes it).

    Raises AttachError with the verifier's complaint if the kernel refuses the program.
    """
    if not insns or len(insns) % 8:
        raise AttachError(f"bpf program of {len(insns)} bytes: not whole instructions")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<IIQQII", attr, 0, prog_type, len(insns) // 8,
                         ctypes.addressof(code), ctypes.addressof(lic),
                         1 if log is not None else 0, len(log) if log is not None else 0)
        if log is not None:
            struct.pack_into("<Q", attr, 32, ctypes.addressof(log))
        struct.pack_into(f"<{_OBJ_NAME_LEN}s", attr, 48, _obj_name(name))
        return _bpf(BPF_PROG_LOAD, attr)

    # Quietly first: asking for a log costs time, and a full log buffer is an error of its own.
    fd = attempt(None)
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(_LOG_SIZE)
    fd = attempt(log)
    if fd >= 0:  # passed the second time (a transient failure): keep it
        return fd
    text = log.value.decode(errors="replace")
    complaint = verifier_complaint(text)
    detail = f": {complaint}" if complaint else ""
    raise AttachError(f"the kernel refused eBPF program {name!r} ({len(insns) // 8} insns): "
                      f"{_strerror(-fd)}{detail}")


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> int:
    """Run a loaded program once (or ``repeat`` times) on ``data`` with BPF_PROG_TEST_RUN
    and return its return value. For SCHED_CLS ``data`` is a frame from its Ethernet
    header on (14 bytes at least)."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)  # a program may grow the packet
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat
    struct.pack_into("<IIIIQQI", attr, 0, prog_fd, 0, len(data), len(out),
                     ctypes.addressof(buf), ctypes.addressof(out), repeat)
    ret = _bpf(BPF_PROG_TEST_RUN, attr)
    if ret < 0:
        raise AttachError(f"BPF_PROG_TEST_RUN on a {len(data)}-byte packet failed: "
                          f"{_strerror(-ret)}")
    return int(struct.unpack_from("<I", attr, 4)[0])


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str = "ecapture") -> int:
    """Create a map; returns its fd (the caller closes it)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIIII", attr, 0, map_type, key_size, value_size, max_entries, 0)
    struct.pack_into(f"<{_OBJ_NAME_LEN}s", attr, 28, _obj_name(name))
    fd = _bpf(BPF_MAP_CREATE, attr)
    if fd < 0:
        raise AttachError(f"cannot create BPF map {name!r} (type {map_type}): "
                          f"{_strerror(-fd)}")
    return fd


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """Set ``key`` to ``value`` in a map (for a PROG_ARRAY: both u32, the value a program
    fd)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(k), ctypes.addressof(v),
                     flags)
    ret = _bpf(BPF_MAP_UPDATE_ELEM, attr)
    if ret < 0:
        raise AttachError(f"cannot update BPF map fd {map_fd}: {_strerror(-ret)}")

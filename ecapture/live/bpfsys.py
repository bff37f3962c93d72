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
from dataclasses import dataclass
from typing import Any

from ecapture.errors import AttachError
from ecapture.live.prereq import _NR_BPF

# Commands and types from <linux/bpf.h>.
BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15

BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_RINGBUF = 27

BPF_ANY = 0

_ATTR_SIZE = 128  # larger than every layout used here; the kernel checks the tail is zero
_OBJ_NAME_LEN = 16
_LOG_SIZE = 4 << 20  # enough for the verifier's log of any program bpfasm produces

_libc: Any = None


def _syscall_number() -> int:
    machine = platform.machine()
    nr = _NR_BPF.get(machine)
    if nr is None:
        raise AttachError(f"bpf(2): unknown system call number on {machine}")
    return nr


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(cmd, attr, sizeof attr): the result, or -errno."""
    try:
        return syscall(_syscall_number(), ctypes.c_long(cmd), attr, ctypes.c_ulong(len(attr)))
    except OSError as e:
        return -(e.errno or 1)


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
              name: str = "ecapture", expected_attach_type: int = 0) -> int:
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
        struct.pack_into("<I", attr, 68, expected_attach_type)  # after prog_ifindex
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


# -- what the buffer readers need (they want OSError, not AttachError) ---------------


# struct bpf_map_info is 88 bytes today; the kernel copies min(info_len, its size) and wants
# anything past its own size to be zero, so a zeroed, larger buffer is forward compatible.
_MAP_INFO_LEN = 256

def syscall(nr: int, *args: Any) -> int:
    """syscall(2) through libc; raises OSError with the kernel's errno on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = int(_libc.syscall(nr, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syscall {nr}: {os.strerror(err)}")
    return ret


def bpf(cmd: int, attr: bytearray) -> int:
    """bpf(2) with ``attr`` as union bpf_attr (zero-padded by the caller)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(38, f"bpf(2): unknown syscall number on {platform.machine()}")
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    return syscall(nr, cmd, buf, len(attr))


@dataclass(frozen=True)
class MapInfo:
    """The fields of struct bpf_map_info the readers check."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


def map_info(map_fd: int) -> MapInfo:
    """Ask the kernel about a map (BPF_OBJ_GET_INFO_BY_FD): its type and max_entries,
    which for a ring buffer is the size of the data area in bytes."""
    info = bytearray(_MAP_INFO_LEN)
    info_buf = (ctypes.c_char * len(info)).from_buffer(info)
    attr = bytearray(16)  # the info struct of union bpf_attr: bpf_fd, info_len, info ptr
    struct.pack_into("=IIQ", attr, 0, map_fd, len(info), ctypes.addressof(info_buf))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    del info_buf  # drop the export so ``info`` can be read freely
    type_, id_, key_size, value_size, max_entries, flags = struct.unpack_from("=6I", info, 0)
    name = bytes(info[24:40]).split(b"\0", 1)[0].decode("ascii", "replace")
    return MapInfo(type_, id_, key_size, value_size, max_entries, flags, name)


def map_update_u32(map_fd: int, key: int, value: int) -> None:
    """BPF_MAP_UPDATE_ELEM (BPF_ANY) for a map with u32 keys and u32 values."""
    kv = bytearray(struct.pack("=II", key, value))
    kv_buf = (ctypes.c_char * 8).from_buffer(kv)
    base = ctypes.addressof(kv_buf)
    attr = bytearray(32)  # map_fd, pad, key ptr, value ptr, flags
    struct.pack_into("=IIQQQ", attr, 0, map_fd, 0, base, base + 4, 0)
    try:
        bpf(BPF_MAP_UPDATE_ELEM, attr)
    finally:
        del kv_buf


def map_delete_u32(map_fd: int, key: int) -> None:
    """BPF_MAP_DELETE_ELEM for a map with u32 keys."""
    k = bytearray(struct.pack("=I", key))
    k_buf = (ctypes.c_char * 4).from_buffer(k)
    attr = bytearray(32)
    struct.pack_into("=IIQ", attr, 0, map_fd, 0, ctypes.addressof(k_buf))
    try:
        bpf(BPF_MAP_DELETE_ELEM, attr)
    finally:
        del k_buf


# -- uprobes as BPF links (Linux 6.6+) ------------------------------------------------

BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1


def link_create_uprobe_multi(prog_fd: int, path: str, offsets: list[int],
                             ret: bool = False, ref_ctr: int = 0) -> int:
    """A uprobe_multi link: ``prog_fd`` (a kprobe-type program loaded for
    BPF_TRACE_UPROBE_MULTI) at each file offset of ``path`` (uretprobes with ``ret``), with
    ``ref_ctr`` as each one's USDT semaphore offset (0: none). Returns the link's fd;
    raises OSError with the kernel's errno (EINVAL before 6.6)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    offs = (ctypes.c_uint64 * len(offsets))(*offsets)
    ref_ctrs = (ctypes.c_uint64 * len(offsets))(*[ref_ctr] * len(offsets))
    attr = bytearray(_ATTR_SIZE)
    # link_create: prog_fd, target_fd, attach_type, flags, then uprobe_multi: path,
    # offsets, ref_ctr_offsets, cookies, cnt, flags, pid
    struct.pack_into("=IIIIQQQQIII", attr, 0, prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0,
                     ctypes.addressof(name), ctypes.addressof(offs),
                     ctypes.addressof(ref_ctrs) if ref_ctr else 0, 0, len(offsets),
                     BPF_F_UPROBE_MULTI_RETURN if ret else 0, 0)
    try:
        return bpf(BPF_LINK_CREATE, attr)
    finally:
        del name, offs, ref_ctrs

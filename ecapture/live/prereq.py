"""Checks that run before anything is compiled or attached; each failure is one line."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess

from ecapture.errors import AttachError, PrerequisiteError

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def kernel_release() -> str:
    return os.uname().release


def kernel_version(release: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or kernel_release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_root() -> None:
    if os.geteuid() != 0:
        raise PrerequisiteError("live capture needs root (eBPF programs and uprobes); run it "
                                "with sudo, or replay a recording with 'ecapture replay FILE'")


def check_kernel_headers() -> str:
    """bcc compiles at start-up against the running kernel's headers."""
    build = f"/lib/modules/{kernel_release()}/build"
    if os.path.isdir(os.path.join(build, "include")):
        return build
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):  # CONFIG_IKHEADERS: bcc uses it
        return "/sys/kernel/kheaders.tar.xz"
    raise PrerequisiteError(f"kernel headers not found at {build}: install "
                            f"linux-headers-{kernel_release()}, or run scripts/setup.sh, which "
                            "links the closest Debian headers there")


def tracefs() -> str:
    """Where tracefs is mounted; mount it if it is not (we are root by now)."""
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS_CANDIDATES[0]],
                       check=True, capture_output=True)
    if os.path.isdir(os.path.join(TRACEFS_CANDIDATES[0], "events")):
        return TRACEFS_CANDIDATES[0]
    raise PrerequisiteError("tracefs is not mounted and could not be mounted: run "
                            "'mount -t tracefs nodev /sys/kernel/tracing'")


def check_tracepoint(root: str, name: str) -> None:
    category, event = name.split(":", 1)
    if not os.path.isdir(os.path.join(root, "events", category, event)):
        raise AttachError(f"tracepoint {name} is not available on kernel {kernel_release()}")


# bpf(2) by machine; BPF_MAP_TYPE_RINGBUF is 27 in the kernel's uapi enum.
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_RINGBUF = 27


def has_ringbuf() -> bool:
    """Ask the kernel: try to create a one-page BPF ring buffer map. Kernels before 5.8
    refuse the map type; distributions that backport ring buffers to older kernels get
    them. Without bpf(2) (not root, unknown machine) fall back to the version: >= 5.8."""
    import ctypes
    import platform
    import struct

    nr = _NR_BPF.get(platform.machine())
    if nr is not None:
        attr = ctypes.create_string_buffer(128)  # union bpf_attr, zeroed
        struct.pack_into("<IIII", attr, 0, _BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(nr, _BPF_MAP_CREATE, attr, len(attr))
        if fd >= 0:
            os.close(fd)
            return True
        if ctypes.get_errno() in (22, 524):  # EINVAL, ENOTSUPP: the type is unknown
            return False
    return kernel_version() >= (5, 8)


# The kernel functions whose presence tells a feature (helpers are named after their
# implementation): looked up in one pass over kallsyms, which is long.
_KERNEL_FUNCTIONS = ("bpf_probe_read_user", "bpf_task_pt_regs", "bpf_get_current_task_btf")


@functools.cache
def _kernel_functions() -> frozenset[str]:
    wanted = {f" {n}\n" for n in _KERNEL_FUNCTIONS}
    found: set[str] = set()
    with open("/proc/kallsyms", encoding="ascii", errors="replace") as f:
        for line in f:
            cut = line.rfind(" ")
            if line[cut:] in wanted:
                found.add(line[cut + 1:-1])
    return frozenset(found)


def kernel_functions(*names: str) -> set[str]:
    """Which of ``names`` (from _KERNEL_FUNCTIONS) the kernel's symbol table has. Raises
    OSError when kallsyms cannot be read."""
    return set(names) & _kernel_functions()


def has_probe_read_user() -> bool:
    """Whether the kernel has the bpf_probe_read_user helpers (5.5+). Unreadable kallsyms:
    trust the version."""
    try:
        return bool(kernel_functions("bpf_probe_read_user"))
    except OSError:
        return kernel_version() >= (5, 5)


def has_socket_tracepoints(root: str) -> bool:
    """Whether socket I/O can be watched without syscall tracepoints: the
    sock:sock_{send,recv}_length tracepoints (6.4+), and bpf_get_current_task_btf() and
    bpf_task_pt_regs() (5.15+, with BTF) to read the syscall's fd from the task."""
    for event in ("sock_send_length", "sock_recv_length"):
        if not os.path.isdir(os.path.join(root, "events", "sock", event)):
            return False
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return False
    try:
        helpers = kernel_functions("bpf_task_pt_regs", "bpf_get_current_task_btf")
    except OSError:
        return kernel_version() >= (6, 4)
    return len(helpers) == 2


def has_kprobes(root: str | None = None) -> bool:
    """Whether the kernel was built with kprobes (CONFIG_KPROBES): its tracefs has
    kprobe_events, or perf knows the kprobe PMU. Tracepoints need neither."""
    candidates = ["/sys/bus/event_source/devices/kprobe/type"]
    candidates += [os.path.join(r, "kprobe_events") for r in ([root] if root else
                                                               TRACEFS_CANDIDATES)]
    return any(os.path.exists(c) for c in candidates)


def check_tc() -> None:
    """TC classifiers are attached through netlink with pyroute2."""
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise PrerequisiteError("-m pcap needs pyroute2: pip install pyroute2") from None

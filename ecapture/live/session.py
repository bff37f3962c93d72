"""A live capture session: the seed's lifecycle init -> start -> (drain) -> stop -> close.

``init`` checks everything that can fail before the kernel is touched; ``start`` compiles
each of the module's eBPF programs (kern/prelude.c followed by its sources, as one text),
attaches its probes and opens a reader on each event buffer. Draining those readers is
:mod:`ecapture.live.drain`'s job. ``close`` detaches everything, also after errors and
signals (bcc's cleanup closes every probe fd it opened; TC filters are removed).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecapture.errors import AttachError
from ecapture.live import prereq
from ecapture.live.bccload import load_bcc
from ecapture.live.btf import member_offsets
from ecapture.live.perfbuf import PerfBufferReader
from ecapture.live.ringbuf import RingBufferReader
from ecapture.live.tc import TcAttachments
from ecapture.live.uprobes import Uprobes, detach_bcc_uprobes, has_uprobe_links
from ecapture.modules.base import Features, Module, Observation, Probe, Program
from ecapture.pipeline import Binding
from ecapture.targets import elf_symbols

RINGBUF_CPU = 0xFFFFFFFF  # a ring buffer is shared by all CPUs: the CPU is not known

# From a task to the socket behind one of its fds: task_struct.files -> files_struct.fdt ->
# fdtable.{max_fds, fd[]} -> file.private_data (a struct socket) -> socket.sk.
FILE_TABLE_OFFSETS = (
    ("TASK_FILES", "task_struct", "files"), ("FILES_FDT", "files_struct", "fdt"),
    ("FDT_MAX_FDS", "fdtable", "max_fds"), ("FDT_FD", "fdtable", "fd"),
    ("FILE_PRIVATE_DATA", "file", "private_data"), ("SOCKET_SK", "socket", "sk"),
)


def kern_dir() -> Path:
    """kern/ beside the package in a source tree, or the copy shipped inside the package."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "kern", here / "kern"):
        if (candidate / "prelude.c").exists():
            return candidate
    raise AttachError(f"eBPF sources (kern/) not found near {here}")


def program_text(program: Program) -> str:
    """kern/prelude.c and the program's sources as the one text bcc compiles. #line marks
    keep compiler messages pointing at the right file and line."""
    kern = kern_dir()
    parts = []
    for name in ("prelude.c", *program.sources):
        path = kern / name
        try:
            text = path.read_text()
        except OSError as e:
            raise AttachError(f"cannot read eBPF source {path}: {e.strerror}") from None
        parts.append(f'#line 1 "{path}"\n{text}')
    return "".join(parts)


@dataclass
class Reader:
    """One event buffer being drained: which binding it feeds, how it is read."""

    binding: Binding
    ring: RingBufferReader | None = None
    perf: PerfBufferReader | None = None
    dropped: Any = None  # the program's "dropped" counter table (ring buffers)

    def fds(self) -> list[int]:
        if self.ring is not None:
            return [self.ring.fileno()]
        return self.perf.fds() if self.perf is not None else []

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
        if self.perf is not None:
            self.perf.close()


@dataclass
class _Loaded:
    program: Program
    bpf: Any
    attached: list[Probe] = field(default_factory=list)


class LiveSession:
    def __init__(self, module: Module, bindings: list[Binding], *, force_perf: bool = False,
                 ringbuf_pages: int = 8192, perf_pages: int = 1024):
        self.module = module
        self.bindings = [b for b in bindings if b.module is module]
        self.force_perf = force_perf
        self.ringbuf_pages = ringbuf_pages
        self.perf_pages = perf_pages
        self.features = Features()
        self.programs: list[Program] = []
        self.attached: list[Probe] = []
        self.skipped: list[Probe] = []
        self.readers: list[Reader] = []
        self.notes: list[str] = []  # one-line remarks for the user (e.g. a filter's fallback)
        self._failed_files: set[str | None] = set()  # files a best-effort probe failed on
        self._uprobes = Uprobes()  # as BPF links once the kernel is known to have them
        self.kernel_filter = False  # -m pcap's filter runs in the kernel
        self._loaded: list[_Loaded] = []
        self._tracefs = ""
        self._tc = TcAttachments()
        self._filter_fds: list[int] = []
        self._detached = False
        #: what the live layer learned while the capture ran (a library attached late), for
        #: the drain thread to record: appended by other threads, taken by the drain's
        self.facts: collections.deque[Observation] = collections.deque()
        # Attaching while the drain thread reads the counters: bcc's tables are not meant
        # for two threads at once, and a detach must not race a late attach.
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------
    def init(self) -> None:
        """Check everything that can fail before touching the kernel."""
        self.module.check()
        prereq.check_root()
        self._bcc = load_bcc()
        prereq.check_kernel_headers()
        self._tracefs = prereq.tracefs()
        self.module.init()
        self.detect_features()
        self.programs = self.module.programs(self.features)
        for program in self.programs:
            for probe in program.probes:
                if probe.kind == "tracepoint":
                    prereq.check_tracepoint(self._tracefs, probe.target)
                elif probe.kind == "tc":
                    prereq.check_tc()

    def detect_features(self) -> Features:
        """Ask the running kernel what it offers (--perf-buffer overrides ring buffers)."""
        self.features.ringbuf = prereq.has_ringbuf() and not self.force_perf
        self.features.probe_read_user = prereq.has_probe_read_user()
        self.features.socket_tracepoints = prereq.has_socket_tracepoints(
            self._tracefs or prereq.tracefs())
        if not self.features.socket_tracepoints:
            # The syscall tracepoints' path tells an accepted fd's socket from the task's
            # file table (kern/tls.c), where the kernel's BTF says its members are.
            self.features.kernel_offsets = dict(member_offsets(FILE_TABLE_OFFSETS))
        if members := self.module.kernel_members():
            self.features.kernel_offsets.update(member_offsets(members))
        self._uprobes.supported = has_uprobe_links()
        return self.features

    def cflags(self, program: Program) -> list[str]:
        """The kernel's features, the same -D flags for every program, then its own."""
        f = self.features
        flags = [f"-I{kern_dir()}", f"-DUSE_RINGBUF={int(f.ringbuf)}",
                 f"-DHAVE_PROBE_READ_USER={int(f.probe_read_user)}"]
        if f.ringbuf:
            flags.append(f"-DRINGBUF_PAGES={self.ringbuf_pages}")
        flags += [f"-DKOFF_{name}={offset}" for name, offset in f.kernel_offsets.items()]
        return flags + list(program.cflags)

    def start(self) -> None:
        try:
            for program in self.programs:
                self._start_program(program)
        except BaseException:
            self.close()
            raise
        self._log_session()

    def _start_program(self, program: Program) -> None:
        try:
            bpf = self._bcc.BPF(text=program_text(program).encode(),
                                cflags=self.cflags(program))
        except Exception as e:
            names = ", ".join(program.sources)
            raise AttachError(f"compiling {names} failed: {_one_line(e)}") from None
        loaded = _Loaded(program, bpf)
        self._loaded.append(loaded)
        self._attach(loaded)
        self._open_buffers(loaded)

    def _log_session(self) -> None:
        """With ECAPTURE_SESSION_LOG=FILE, append what this session attached and which
        buffer it chose, one JSON line per session: the kernel matrix reads it to show
        which path really ran on each kernel."""
        path = os.environ.get("ECAPTURE_SESSION_LOG")
        if not path:
            return
        entry = {"module": self.module.name, "kernel": prereq.kernel_release(),
                 "kprobes_available": prereq.has_kprobes(self._tracefs), **self.describe()}
        # A diagnostic: an unwritable log must not stop a capture that is running.
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _attach(self, loaded: _Loaded) -> None:
        bpf = loaded.bpf
        tc_probes = [p for p in loaded.program.probes if p.kind == "tc"]
        if tc_probes:
            self._attach_tc(loaded, tc_probes)
        for probe in loaded.program.probes:
            if probe.kind == "tc":
                continue
            if probe.kind == "tracepoint":
                # bcc attaches TRACEPOINT_PROBE functions itself when it loads the program.
                if probe.target.encode() not in bpf.tracepoint_fds:
                    bpf.attach_tracepoint(tp=probe.target.encode(), fn_name=probe.fn.encode())
                self.attached.append(probe)
                continue
            try:
                self._attach_uprobe(bpf, probe)
            except AttachError as e:
                if not probe.best_effort:
                    raise
                self._failed(probe, str(e))

    def _failed(self, probe: Probe, why: str) -> None:
        """A best-effort probe that did not go on: said once per file."""
        if probe.library not in self._failed_files:
            self._failed_files.add(probe.library)
            self.notes.append(f"not attached to {probe.library}: {why}")
        self.skipped.append(probe)

    def _attach_uprobe(self, bpf: Any, probe: Probe) -> None:
        assert probe.library is not None
        if probe.address is not None:
            self._attach_address(bpf, probe)
            return
        # Only an optional probe's symbol is looked up first: a required one is in the file
        # (the module checked), and reading a copy's symbol tables again costs milliseconds.
        if probe.optional and probe.target not in elf_symbols(probe.library):
            self.skipped.append(probe)
            return
        try:
            self._uprobes.attach(bpf, probe.fn, probe.library, probe.target, None,
                                 probe.kind == "uretprobe")
        except Exception as e:
            raise AttachError(f"attaching {probe.kind} {probe.target} in {probe.library} "
                              f"failed: {_one_line(e)}") from None
        self.attached.append(probe)

    def attach_late(self, probes: list[Probe], program: str = "main") -> str | None:
        """While the capture runs: attach ``probes`` (uprobes on a file that a process
        started since maps) to an already loaded program. All or none: on a failure the
        ones attached are left on (bcc cannot detach one address of a file alone) and the
        error is returned in one line; None when all went on."""
        with self._lock:
            if self._detached:
                return "the capture is ending"
            loaded = next((lo for lo in self._loaded if lo.program.name == program), None)
            if loaded is None:
                return f"no program {program} is loaded"
            for probe in probes:
                try:
                    self._attach_uprobe(loaded.bpf, probe)
                except AttachError as e:
                    return str(e)
            return None

    def _attach_address(self, bpf: Any, probe: Probe) -> None:
        """A uprobe or uretprobe at an address: bcc maps the virtual address to its file
        offset."""
        assert probe.library is not None and probe.address is not None
        if probe.kind not in ("uprobe", "uretprobe"):
            raise AttachError(f"{probe.kind} {probe.target}: only uprobes attach at an address")
        try:
            self._uprobes.attach(bpf, probe.fn, probe.library, None, probe.address,
                                 probe.kind == "uretprobe")
        except Exception as e:
            raise AttachError(f"attaching {probe.kind} {probe.target} (0x{probe.address:x}) in "
                              f"{probe.library} failed: {_one_line(e)}") from None
        self.attached.append(probe)

    def _attach_tc(self, loaded: _Loaded, probes: list[Probe]) -> None:
        """TC classifiers, behind libpcap's filter translated to eBPF when there is one:
        it tail-calls the capture function only for matching packets."""
        from ecapture import bpfasm
        from ecapture.live import bpfsys
        from ecapture.packetfilter import compile_filter

        bpf = loaded.bpf
        expression = str(self.module.config.get("pcap_filter") or "").strip()
        program = compile_filter(expression) if expression else None
        jump = bpf[b"packet_capture"] if program is not None else None
        for slot, probe in enumerate(probes):
            ifname, hook = probe.target.split(":")
            fn = bpf.load_func(probe.fn.encode(), self._bcc.BPF.SCHED_CLS)
            fd = fn.fd
            if program is not None and jump is not None:
                try:
                    insns = bpfasm.translate(program, bpfasm.TailCall(jump.map_fd, slot))
                except ValueError as e:
                    # e.g. protochain: libpcap loops backwards, which the verifier refuses.
                    self.notes.append(f"the packet filter cannot run in the kernel ({e}); "
                                      "every packet is copied and filtered in user space")
                    program = jump = None
                else:
                    jump[ctypes.c_int(slot)] = ctypes.c_int(fn.fd)
                    fd = bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, insns,
                                          name=f"ecap_filter_{hook}"[:15])
                    self._filter_fds.append(fd)
                    self.kernel_filter = True
            self._tc.attach(ifname, hook, fd, probe.fn)
            self.attached.append(probe)

    def _open_buffers(self, loaded: _Loaded) -> None:
        bpf = loaded.bpf
        for binding in self.bindings:
            if binding.map.program != loaded.program.name:
                continue
            table = bpf[binding.map.table.encode()]
            if self.features.ringbuf and binding.map.buffer == "auto":
                reader = Reader(binding, ring=RingBufferReader(table.map_fd),
                                dropped=bpf[b"dropped"])
            else:
                reader = Reader(binding, perf=PerfBufferReader(
                    table.map_fd, self.perf_pages, sample_size=binding.map.sample_size))
            self.readers.append(reader)

    def dropped(self, reader: Reader) -> int:
        """What the program behind ``reader`` counted as failed ring-buffer outputs."""
        with self._lock:
            if reader.dropped is None or self._detached:
                return 0
            return int(reader.dropped.sum(reader.dropped.Key(0)).value)

    def detach(self) -> None:
        """Detach every probe and unload the programs; the buffers stay readable (their
        memory mappings hold the maps), so what is in them can still be drained."""
        with self._lock:
            if self._detached:
                return
            self._detached = True
        self._tc.detach_all()
        for fd in self._filter_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._filter_fds.clear()
        self._uprobes.close()
        for loaded in self._loaded:
            detach_bcc_uprobes(loaded.bpf)
            loaded.bpf.cleanup()
        self._loaded.clear()

    def close(self) -> None:
        """Detach everything and unmap the buffers; safe to call twice and after a failed
        start."""
        self.detach()
        for reader in self.readers:
            with contextlib.suppress(Exception):
                reader.close()
        self.readers.clear()

    def describe(self) -> dict[str, Any]:
        return {"buffer": "ringbuf" if self.features.ringbuf else "perf",
                "probe_read_user": self.features.probe_read_user,
                "socket_hooks": "tracepoints" if self.features.socket_tracepoints
                else "syscalls",
                "probes": [f"{p.kind}:{p.target}" for p in self.attached],
                "skipped": [f"{p.kind}:{p.target}" for p in self.skipped],
                "kernel_filter": self.kernel_filter,
                "pid": os.getpid()}

    def dump(self) -> str:
        """--dump-ebpf: every program's text and flags, loading nothing."""
        out = []
        for program in self.programs:
            out.append(f"// program {program.name}: cflags: {' '.join(self.cflags(program))}\n")
            out.append(program_text(program))
        return "".join(out)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__

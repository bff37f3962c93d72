"""A live capture session: the seed's lifecycle init -> start -> run -> stop -> close.

The buffer callbacks only copy bytes into Records; decoding happens afterwards, in the
shared pipeline, outside the callback. close() detaches everything, also after errors and
signals (bcc's cleanup closes every probe fd it opened).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecapture import procnet
from ecapture.errors import AttachError
from ecapture.live import prereq
from ecapture.live.bccload import load_bcc
from ecapture.live.tc import TcAttachments
from ecapture.modules.base import Features, Module, Probe
from ecapture.pipeline import Binding
from ecapture.record import Lost, Record
from ecapture.targets import elf_symbols

RINGBUF_CPU = 0xFFFFFFFF  # a ring buffer is shared by all CPUs: the CPU is not known
POLL_MS = 100


def kern_dir() -> Path:
    """kern/ beside the package in a source tree, or the copy shipped inside the package."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "kern", here / "kern"):
        if (candidate / "ecapture.h").exists():
            return candidate
    raise AttachError(f"eBPF sources (kern/) not found near {here}")


class LiveSession:
    def __init__(self, module: Module, bindings: list[Binding],
                 sink: Callable[[Record | Lost], None], *, force_perf: bool = False,
                 ringbuf_pages: int = 2048, perf_pages: int = 256):
        self.module = module
        self.bindings = [b for b in bindings if b.module is module]
        self.sink = sink
        self.force_perf = force_perf
        self.ringbuf_pages = ringbuf_pages
        self.perf_pages = perf_pages
        self.features = Features()
        self.bpf: Any = None
        self.attached: list[Probe] = []
        self.skipped: list[Probe] = []
        self._pending: list[Record | Lost] = []
        self._dropped_seen = 0
        self._stopping = False
        self._callbacks: list[Any] = []  # keep ctypes callbacks alive
        self._tracefs = ""
        self._tc = TcAttachments()
        self._has_ring = False
        self._has_perf = False

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
        for probe in self.module.probes():
            if probe.kind == "tracepoint":
                prereq.check_tracepoint(self._tracefs, probe.target)
            elif probe.kind == "tc":
                prereq.check_tc()

    def detect_features(self) -> Features:
        """Ask the running kernel what it offers (--perf-buffer overrides ring buffers)."""
        self.features.ringbuf = prereq.has_ringbuf() and not self.force_perf
        self.features.probe_read_user = prereq.has_probe_read_user()
        return self.features

    def cflags(self) -> list[str]:
        """The kernel's features, the same -D flags for every module, then the module's."""
        f = self.features
        flags = [f"-I{kern_dir()}", f"-DUSE_RINGBUF={int(f.ringbuf)}",
                 f"-DHAVE_PROBE_READ_USER={int(f.probe_read_user)}"]
        if f.ringbuf:
            flags.append(f"-DRINGBUF_PAGES={self.ringbuf_pages}")
        return flags + self.module.cflags(f)

    def start(self) -> None:
        src = kern_dir() / self.module.source
        try:
            self.bpf = self._bcc.BPF(src_file=str(src).encode(), cflags=self.cflags())
        except Exception as e:
            raise AttachError(f"compiling {src.name} failed: {_one_line(e)}") from None
        try:
            self._attach()
            self._open_buffers()
        except BaseException:
            self.close()
            raise
        self._log_session()

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

    def _attach(self) -> None:
        for probe in self.module.probes():
            if probe.kind == "tc":
                ifname, hook = probe.target.split(":")
                fn = self.bpf.load_func(probe.fn.encode(), self._bcc.BPF.SCHED_CLS)
                self._tc.attach(ifname, hook, fn.fd, probe.fn)
                self.attached.append(probe)
                continue
            if probe.kind == "tracepoint":
                # bcc attaches TRACEPOINT_PROBE functions itself when it loads the program.
                if probe.target.encode() not in self.bpf.tracepoint_fds:
                    self.bpf.attach_tracepoint(tp=probe.target.encode(), fn_name=probe.fn.encode())
                self.attached.append(probe)
                continue
            assert probe.library is not None
            if probe.target not in elf_symbols(probe.library):
                if probe.optional:
                    self.skipped.append(probe)
                    continue
                raise AttachError(f"symbol {probe.target} not found in {probe.library}")
            attach = (self.bpf.attach_uprobe if probe.kind == "uprobe"
                      else self.bpf.attach_uretprobe)
            try:
                attach(name=probe.library.encode(), sym=probe.target.encode(),
                       fn_name=probe.fn.encode())
            except Exception as e:
                raise AttachError(f"attaching {probe.kind} {probe.target} in {probe.library} "
                                  f"failed: {_one_line(e)}") from None
            self.attached.append(probe)

    def _open_buffers(self) -> None:
        for binding in self.bindings:
            table = self.bpf[binding.map.name.encode()]
            map_id = binding.map_id
            if self.features.ringbuf and binding.map.buffer == "auto":
                self._has_ring = True

                def on_ring(_ctx: Any, data: Any, size: int, map_id: int = map_id) -> None:
                    self._pending.append(Record(map_id, RINGBUF_CPU, time.monotonic_ns(),
                                                ctypes.string_at(data, size)))
                table.open_ring_buffer(on_ring)
                self._callbacks.append(on_ring)
            else:
                def on_perf(cpu: int, data: Any, size: int, map_id: int = map_id) -> None:
                    self._pending.append(Record(map_id, cpu, time.monotonic_ns(),
                                                ctypes.string_at(data, size)))

                def on_lost(count: int, map_id: int = map_id) -> None:
                    self._pending.append(Lost(map_id, RINGBUF_CPU, time.monotonic_ns(), count))
                table.open_perf_buffer(on_perf, page_cnt=self.perf_pages, lost_cb=on_lost)
                self._has_perf = True
                self._callbacks.extend([on_perf, on_lost])

    def poll_once(self, timeout_ms: int = POLL_MS) -> int:
        """Wait for events up to timeout_ms, hand them to the sink; returns how many."""
        if self._has_ring:
            self.bpf.ring_buffer_poll(timeout_ms)
            self._account_ringbuf_drops()
            if self._has_perf:  # packets: a perf buffer beside the ring buffer
                self.bpf.perf_buffer_poll(0)
        else:
            self.bpf.perf_buffer_poll(timeout_ms)
        batch, self._pending = self._pending, []
        for item in batch:
            if isinstance(item, Record):
                # Outside the callback: tuples the kernel could not give are looked up in
                # /proc now, and recorded like kernel events, so replay shows them too.
                for data in self.module.backfill(item.data, procnet.lookup):
                    self.sink(item if data is item.data else
                              Record(item.map_id, item.cpu, item.recv_ns, data))
            else:
                self.sink(item)
        return len(batch)

    def _account_ringbuf_drops(self) -> None:
        # kern/ counts failed ringbuf outputs per CPU; turn increases into Lost records.
        # (the C program defines "dropped" whenever it uses a ring buffer)
        table = self.bpf[b"dropped"]
        total = int(table.sum(table.Key(0)).value)
        if total > self._dropped_seen and self.bindings:
            self._pending.append(Lost(self.bindings[0].map_id, RINGBUF_CPU,
                                      time.monotonic_ns(), total - self._dropped_seen))
            self._dropped_seen = total

    def run(self, until: Callable[[], bool] | None = None,
            after_poll: Callable[[], None] | None = None) -> None:
        """Poll until stop() is called (e.g. from a signal handler) or ``until()`` is true;
        ``after_poll`` runs after every poll (the CLI delivers and flushes there)."""
        while not self._stopping and not (until and until()):
            self.poll_once()
            if after_poll is not None:
                after_poll()

    def stop(self) -> None:
        self._stopping = True

    def drain(self) -> None:
        """Collect what is still buffered after stop()."""
        if self.bpf is not None:
            while self.poll_once(0):
                pass

    def close(self) -> None:
        self._tc.detach_all()
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            bpf.cleanup()

    def describe(self) -> dict[str, Any]:
        return {"buffer": "ringbuf" if self.features.ringbuf else "perf",
                "probe_read_user": self.features.probe_read_user,
                "probes": [f"{p.kind}:{p.target}" for p in self.attached],
                "skipped": [f"{p.kind}:{p.target}" for p in self.skipped],
                "pid": os.getpid()}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__

"""What a recording says about itself: host, kernel, tool, modules, maps, clocks."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

from ecapture import __version__
from ecapture.modules.base import Module
from ecapture.pipeline import Binding


def clock_offset_ns(samples: int = 5) -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few samples: adding it to a
    bpf_ktime_get_ns() timestamp gives wall-clock time."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, r - (m1 + m2) // 2)
    assert best is not None
    return best[1]


def build_metadata(modules: Sequence[Module], bindings: Sequence[Binding],
                   argv: Sequence[str] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    uname = os.uname()
    meta: dict[str, Any] = {
        "tool": "ecapture",
        "tool_version": __version__,
        "python": platform.python_version(),
        "host": uname.nodename,
        "kernel": uname.release,
        "kernel_build": uname.version,
        "machine": uname.machine,
        "created_ns": time.time_ns(),
        "clock_offset_ns": clock_offset_ns(),
        "command_line": list(sys.argv if argv is None else argv),
        "modules": [
            {"name": m.name, "options": m.recorded_options(),
             "targets": [t.as_dict() for t in m.targets]}
            for m in modules
        ],
        "maps": [b.describe() for b in bindings],
    }
    if extra:
        meta.update(extra)
    return meta

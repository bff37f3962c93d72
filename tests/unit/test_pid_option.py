"""--pid as every module checks it: a running process, and a thread's id taken as its
process's (the kernel filters on the process), said in a note rather than never matching."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ecapture.errors import ConfigError
from ecapture.modules.base import check_path_and_pid


def test_a_threads_id_becomes_its_processes() -> None:
    seen: list[int] = []
    done = threading.Event()

    def worker() -> None:
        seen.append(threading.get_native_id())
        done.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    try:
        while not seen:
            pass
        config = {"pid": seen[0]}
        notes = check_path_and_pid(config, None)
    finally:
        done.set()
        t.join()
    assert seen[0] != os.getpid()
    assert config["pid"] == os.getpid()
    comm = Path("/proc/self/comm").read_text().strip()
    assert notes == [f"--pid {seen[0]} is a thread of process {os.getpid()} ({comm}): "
                     "capturing that process"]


def test_a_process_id_stays_and_says_nothing() -> None:
    config = {"pid": os.getpid()}
    assert check_path_and_pid(config, None) == []
    assert config == {"pid": os.getpid()}


def test_no_such_process_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="--pid 4194304: no such process"):
        check_path_and_pid({"pid": 4194304}, None)  # above any pid_max

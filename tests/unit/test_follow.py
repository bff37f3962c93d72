"""Reading a recording while it is written (the live output's source): every item arrives
whatever the writer's pace, the reader ticks while it waits, and the end is the writer's."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ecapture.follow import GrowingFile
from ecapture.record import Fact, Lost, Record
from ecapture.record.reader import Reader
from ecapture.record.writer import Writer

META = {"tool": "ecapture", "maps": [{"id": 0, "module": "m", "name": "events"}]}
ITEMS = [Record(0, 0, i, bytes([i]) * (i * 37 % 300)) for i in range(60)] + \
    [Lost(0, 1, 99, 3), Fact(0, 100, "socket", {"pid": 1})]


def write_slowly(path: Path, notify_w: int, clean: bool) -> None:
    writer = Writer(path, META)
    os.write(notify_w, b"\0")
    for n, item in enumerate(ITEMS):
        writer.write(item)
        if n % 7 == 0:  # batches of uneven size, with pauses between them
            writer.flush()
            os.write(notify_w, b"\0")
            time.sleep(0.01)
    if clean:
        writer.close()
    else:
        writer.abort()  # killed: no END marker
    os.close(notify_w)


def follow(tmp_path: Path, clean: bool) -> tuple[list[object], Reader, list[int]]:
    path = tmp_path / "growing.ecap"
    path.touch()
    notify_r, notify_w = os.pipe()
    ticks: list[int] = []
    growing = GrowingFile(os.open(path, os.O_RDONLY), notify_r, idle=ticks.append)
    thread = threading.Thread(target=write_slowly, args=(path, notify_w, clean))
    thread.start()
    try:
        with Reader(growing) as reader:  # type: ignore[arg-type]
            items = list(reader)
    finally:
        thread.join()
        growing.close()
    return items, reader, ticks


def test_every_item_of_a_growing_recording(tmp_path: Path) -> None:
    items, reader, _ = follow(tmp_path, clean=True)
    assert items == ITEMS
    assert reader.status.clean_end and not reader.status.truncated


def test_a_writer_that_dies_ends_the_reading(tmp_path: Path) -> None:
    items, reader, _ = follow(tmp_path, clean=False)
    assert items == ITEMS
    assert not reader.status.clean_end


def test_the_reader_ticks_while_it_waits(tmp_path: Path) -> None:
    path = tmp_path / "idle.ecap"
    Writer(path, META).flush()  # a header, then nothing for a while
    notify_r, notify_w = os.pipe()
    ticks: list[int] = []
    growing = GrowingFile(os.open(path, os.O_RDONLY), notify_r, idle=ticks.append)
    timer = threading.Timer(0.35, os.close, args=(notify_w,))
    timer.start()
    with Reader(growing) as reader:  # type: ignore[arg-type]
        assert list(reader) == []
    timer.join()
    growing.close()
    assert len(ticks) >= 2 and ticks == sorted(ticks)


def test_the_reader_says_when_it_has_caught_up(tmp_path: Path) -> None:
    """``caught_up`` runs at the file's end before each wait, once every item written so
    far has been handed over: the live output flushes there, so a pipe shows each batch
    as it comes, not only at the end."""
    path = tmp_path / "caught-up.ecap"
    path.touch()
    notify_r, notify_w = os.pipe()
    items: list[object] = []
    handed_over: list[int] = []
    growing = GrowingFile(os.open(path, os.O_RDONLY), notify_r,
                          caught_up=lambda: handed_over.append(len(items)))
    thread = threading.Thread(target=write_slowly, args=(path, notify_w, True))
    thread.start()
    try:
        with Reader(growing) as reader:  # type: ignore[arg-type]
            for item in reader:
                items.append(item)
    finally:
        thread.join()
        growing.close()
    assert items == ITEMS
    # write_slowly writes 9 batches with pauses between them: the reader caught up with
    # several while the writer went on, having handed over more each time.
    assert handed_over == sorted(handed_over)
    assert len({n for n in handed_over if 0 < n < len(ITEMS)}) >= 3

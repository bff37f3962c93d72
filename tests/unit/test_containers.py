"""Containers, without root and without bcc: the /proc readers that tell library files apart
by device and inode, the TLS modules' discovery of every copy of their library (the same
build reuses its probes, another is inspected, or refused in one line), the place of a
process (mount namespace, cgroup) on events, in the text and json models, and in the
--mntns and --cgroup replay filters."""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ecapture import targets
from ecapture.cli import main
from ecapture.errors import DecodeError
from ecapture.events import Conn, Event, LibraryAttached, Place, TlsData, place_label
from ecapture.filters import EventFilter
from ecapture.modules import tlsfamily
from ecapture.modules.base import Features, NewTarget
from ecapture.modules.openssl import LIBSSL_PATTERNS, OpenSSLModule
from ecapture.outputs.jsonl import JsonOutput
from ecapture.outputs.text import TextOutput
from ecapture.record import Fact, Record
from ecapture.record.reader import Reader
from ecapture.record.writer import Writer
from ecapture.render import Style
from ecapture.structs.tls import EVENT_CONN, EVENT_EXEC, EVENT_SSL_DATA, EXEC, conn_event_t
from ecapture.structs.tls import ssl_data_event_t as data_t
from ecapture.targets import (
    MappedFile,
    _mapped,
    build_id,
    cgroup_of,
    descendants,
    file_key,
    files_in_use,
    find_library,
    libraries_of_process,
    mapped_files,
    mount_namespace,
    quick_build_id,
    reach,
    real_path,
)
from ecapture.testing.factories import make_event
from ecapture.testing.replay import replay_events

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "recordings" / "tls" / "curl_http11.ecap"
NO_PID = 4194304  # above any pid_max: no such process
OTHER_NS = 4026539999  # a mount namespace that is not ours


def system_library(*patterns: str) -> str:
    """A real path of a library of this machine, or the test is skipped."""
    found = find_library(patterns)
    if found is None:
        pytest.skip(f"no {patterns[0]} on this machine")
    return os.path.realpath(found)


def copy_as(src: str, directory: Path, name: str) -> str:
    """A copy of ``src`` (another inode, the same bytes) under ``name``, as a real path:
    /proc/PID/maps names files by their real paths."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / name
    shutil.copyfile(src, dest)
    return os.path.realpath(dest)


def other_build(src: str, dest: str) -> str:
    """``dest``: ``src`` with its GNU build-id changed, as another build would have it."""
    old = quick_build_id(src)
    assert old is not None
    data = Path(src).read_bytes()
    new = bytes(b ^ 0xFF for b in bytes.fromhex(old))
    assert data.count(bytes.fromhex(old)) >= 1
    Path(dest).write_bytes(data.replace(bytes.fromhex(old), new))
    return dest


class Child:
    """A process of ours that maps the given libraries and waits: a second process that
    maps a file, and a process the test knows the maps of."""

    def __init__(self, libraries: list[str]):
        code = ("import ctypes, sys\n"
                f"for p in {libraries!r}: ctypes.CDLL(p)\n"
                "print('ready', flush=True)\n"
                "sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"
        self.pid = self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()  # it reads to the end, then exits
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def child() -> Iterator[Callable[[list[str]], Child]]:
    started: list[Child] = []

    def start(libraries: list[str]) -> Child:
        started.append(Child(libraries))
        return started[-1]

    yield start
    for c in started:
        c.close()


# -- /proc/PID/maps and the files it names ---------------------------------------------------

def test_mapped_parses_file_lines_with_device_and_inode() -> None:
    maps = (
        "55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1311 /usr/bin/curl\n"
        "7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n"
        "7f1000000000-7f1000001000 r-xp 00002000 103:0a 99 /usr/lib/x86_64-linux-gnu/"
        "libssl.so.3\n"
        "7f2000000000-7f2000001000 r--p 00000000 00:2f 4242 /app/my lib.so (deleted)\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                  [stack]\n"
        "7ffd10000000-7ffd10002000 r-xp 00000000 00:00 0 [vdso]\n"
        "garbage\n"
    )
    assert list(_mapped(maps)) == [
        ("/usr/bin/curl", (os.makedev(0xFD, 0x01), 1311)),
        ("/usr/lib/x86_64-linux-gnu/libssl.so.3", (os.makedev(0x103, 0x0A), 99)),
        ("/app/my lib.so (deleted)", (os.makedev(0, 0x2F), 4242)),
    ]


def test_reach_is_the_path_itself_only_for_the_same_file(tmp_path: Path) -> None:
    here = tmp_path / "libx.so"
    here.write_bytes(b"x")
    key = file_key(str(here))
    assert key is not None
    assert reach(77, str(here), key) == str(here)
    # Another file under the same name (a container's), or one we cannot stat: the
    # process's own root names it.
    other = (key[0], key[1] + 1)
    assert reach(77, str(here), other) == f"/proc/77/root{here}"
    assert reach(77, str(here), None) == f"/proc/77/root{here}"
    assert reach(77, "/nonexistent/libx.so", key) == "/proc/77/root/nonexistent/libx.so"


def test_real_path_keeps_proc_root_paths_and_resolves_others(tmp_path: Path) -> None:
    target = tmp_path / "libreal.so.1"
    target.write_bytes(b"x")
    link = tmp_path / "liblink.so"
    link.symlink_to(target.name)
    assert real_path(str(link)) == os.path.realpath(target)
    # Through /proc/PID/root the link is the process's to resolve, not ours.
    inside = f"/proc/{os.getpid()}/root{link}"
    assert os.path.realpath(inside) != inside  # what realpath would have done
    assert real_path(inside) == inside
    assert real_path("/proc/123/root/usr/lib/libssl.so.3") == "/proc/123/root/usr/lib/libssl.so.3"


def test_mapped_files_finds_the_loaded_copy_by_inode(tmp_path: Path) -> None:
    libz = system_library(r"libz\.so\.1")
    copy = copy_as(libz, tmp_path, "libunitcopyz.so.1")
    ctypes.CDLL(copy)
    me = os.getpid()
    (found,) = mapped_files(me, [r"libunitcopyz\.so\.1"])
    st = os.stat(copy)
    assert (found.dev, found.ino) == (st.st_dev, st.st_ino) == found.key
    assert found.path == copy and found.open_path == copy  # our own namespace: as is
    assert found.mntns == os.stat("/proc/self/ns/mnt").st_ino == mount_namespace(me)
    assert found.pids == {me}
    # The system's libz is another inode: a pattern matching both names tells them apart.
    keys = {m.key for m in mapped_files(me, [r"libunitcopyz\.so\.1", r"libz\.so.*"])}
    assert found.key in keys
    assert copy in libraries_of_process(me)


def test_mapped_files_reaches_a_file_our_path_does_not_name(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # As for a container's library bind-mounted over a path that names another file here:
    # the maps line's inode is not what our path opens.
    libz = system_library(r"libz\.so\.1")
    copy = copy_as(libz, tmp_path, "libunitother.so.1")
    ctypes.CDLL(copy)
    real_key, ours = file_key(copy), targets.file_key
    monkeypatch.setattr(targets, "file_key", lambda path: (0, 0) if path == copy else ours(path))
    me = os.getpid()
    (found,) = mapped_files(me, [r"libunitother\.so\.1"])
    assert found.key == real_key and found.path == copy
    assert found.open_path == f"/proc/{me}/root{copy}"
    st = os.stat(found.open_path)  # the kernel resolves it in the process's root
    assert (st.st_dev, st.st_ino) == real_key
    assert f"/proc/{me}/root{copy}" in libraries_of_process(me)


def test_a_deleted_file_is_not_reachable_by_its_name(tmp_path: Path) -> None:
    libz = system_library(r"libz\.so\.1")
    copy = copy_as(libz, tmp_path, "libunitgone.so.1")
    ctypes.CDLL(copy)
    os.unlink(copy)
    assert f"{copy} (deleted)" in Path("/proc/self/maps").read_text()
    assert mapped_files(os.getpid(), [r"libunitgone.*"]) == []
    # libraries_of_process strips the mark; no file of ours is that inode any more.
    assert f"/proc/{os.getpid()}/root{copy}" in libraries_of_process(os.getpid())


def test_files_in_use_merges_the_processes_of_one_file(
        tmp_path: Path, child: Callable[[list[str]], Child]) -> None:
    libz = system_library(r"libz\.so\.1")
    shared = copy_as(libz, tmp_path / "a", "libunitshared.so.1")
    own = copy_as(libz, tmp_path / "b", "libunitshared.so.1")  # same name, another inode
    ctypes.CDLL(shared)
    kid = child([shared, own])
    me = os.getpid()
    found = files_in_use([r"libunitshared\.so\.1"], [kid.pid, me, NO_PID])
    assert {m.key: (m.path, m.pids) for m in found} == {
        file_key(shared): (shared, {me, kid.pid}), file_key(own): (own, {kid.pid})}
    if me < kid.pid:  # in the order first seen, processes by pid
        assert found[0].key == file_key(shared)
    # Every process by default: ours among them.
    everyone = files_in_use([r"libunitshared\.so\.1"])
    shared_key = file_key(shared)
    assert shared_key is not None
    assert {m.key: m.pids for m in everyone}[shared_key] >= {me, kid.pid}


def test_a_process_that_does_not_exist_maps_nothing() -> None:
    assert mapped_files(NO_PID, [r".*"]) == []
    assert files_in_use([r".*"], [NO_PID]) == []
    assert mount_namespace(NO_PID) is None and cgroup_of(NO_PID) is None


def test_descendants_follow_parents(child: Callable[[list[str]], Child]) -> None:
    kid = child([])
    below = descendants(os.getpid())
    assert {os.getpid(), kid.pid} <= below
    assert os.getppid() not in below
    assert descendants(kid.pid) == {kid.pid}


def readelf_build_id(path: str) -> str | None:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True, check=True)
    m = re.search(r"Build ID: ([0-9a-f]+)", out.stdout)
    return m[1] if m else None


@pytest.mark.parametrize("patterns", [(r"libssl\.so\.3", r"libssl\.so\.1\.1"), (r"libz\.so\.1",),
                                      (r"libc\.so\.6",)])
def test_quick_build_id_is_the_notes_build_id(patterns: tuple[str, ...]) -> None:
    path = system_library(*patterns)
    quick = quick_build_id(path)
    assert quick is not None and re.fullmatch(r"[0-9a-f]{16,}", quick)
    assert quick == build_id(path)  # from the section headers, by pyelftools
    if shutil.which("readelf"):
        assert quick == readelf_build_id(path)


def test_quick_build_id_of_what_is_no_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + b"\x00" * 60)
    assert quick_build_id(str(junk)) is None
    assert quick_build_id(str(tmp_path / "missing.so")) is None


# -- discovery: every copy of the library that processes map --------------------------------

@pytest.fixture
def libssl() -> str:
    path = system_library(*LIBSSL_PATTERNS)
    if quick_build_id(path) is None:
        pytest.skip(f"{path} has no build-id")
    return path


def in_use(path: str, seen_as: str, mntns: int | None, pids: set[int]) -> MappedFile:
    st = os.stat(path)
    return MappedFile(st.st_dev, st.st_ino, seen_as, path, mntns, pids)


def discovered(monkeypatch: pytest.MonkeyPatch, found: list[MappedFile],
               config: dict[str, Any] | None = None) -> OpenSSLModule:
    """An OpenSSL module after init(), the processes mapping ``found``."""
    asked: list[Any] = []

    def fake(patterns: Any, pids: Any = None) -> list[MappedFile]:
        asked.append((tuple(patterns), pids))
        return [replace(m, pids=set(m.pids)) for m in found]

    monkeypatch.setattr(tlsfamily, "files_in_use", fake)
    # Only these files: not the libraries of this machine's own containers.
    monkeypatch.setattr(tlsfamily, "running_pids", lambda: [])
    module = OpenSSLModule(dict(config or {}))
    module.init()
    assert asked and asked[0][0] == LIBSSL_PATTERNS
    return module


def test_a_new_namespace_gets_its_library_before_any_process_maps_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    """namespace_targets: the library at the system path of a mount namespace not ours,
    found under the process's root, attached as a copy; the same file twice is nothing."""
    module = discovered(monkeypatch, [in_use(libssl, libssl, None, set())])
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    me = os.getpid()
    root = f"/proc/{me}/root"
    looked: list[str] = []

    def find(patterns: Any, pid: Any = None, root: str = "") -> str | None:
        looked.append(root)
        return root + copy
    monkeypatch.setattr(tlsfamily, "find_library", find)
    monkeypatch.setattr(tlsfamily, "mount_namespace", lambda pid: OTHER_NS)
    (new,) = module.namespace_targets(me)
    assert new.refused is None and new.probes
    assert new.target.mntns == OTHER_NS and new.target.seen_as == copy
    assert new.target.processes == 0
    assert module.namespace_targets(me) == []  # known now
    assert looked == [root]  # the path is learned once per namespace
    # Our own namespace is not looked in: its files are found where they are mapped.
    monkeypatch.setattr(tlsfamily, "mount_namespace", lambda pid: module._my_mntns)
    assert module.namespace_targets(me) == []


def test_a_process_gone_while_its_namespace_is_looked_in_teaches_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    """A namespace's first process may exit while its root is searched (a container's first
    `mount`): finding nothing then must not be learned, or the namespace (or a new one that
    reuses its inode number) would never have its library attached."""
    module = discovered(monkeypatch, [in_use(libssl, libssl, None, set())])
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    brief = subprocess.Popen(["sleep", "60"])
    gone = {"yet": False}

    def find(patterns: Any, pid: Any = None, root: str = "") -> str | None:
        if not gone["yet"]:  # the process exits while we look
            gone["yet"] = True
            brief.kill()
            brief.wait()
            return None
        return root + copy
    monkeypatch.setattr(tlsfamily, "find_library", find)
    monkeypatch.setattr(tlsfamily, "mount_namespace", lambda pid: OTHER_NS)
    assert module.namespace_targets(brief.pid) == []
    assert not module._namespace_paths
    (new,) = module.namespace_targets(os.getpid())  # the namespace's next process
    assert new.refused is None and new.target.seen_as == copy


@pytest.mark.parametrize("first", ["namespace", "maps"])
def test_one_file_with_two_keys_is_attached_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str, first: str) -> None:
    """On overlayfs before Linux 6.x a maps line names the layer's file and stat() the
    overlay's: one file, two (device, inode) keys. Met both ways, in either order, it is
    attached once; twice, each call would be captured twice."""
    module = discovered(monkeypatch, [in_use(libssl, libssl, None, set())])
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    st = os.stat(copy)
    layer = MappedFile(st.st_dev + 1000, st.st_ino, copy, copy, OTHER_NS, {os.getpid()})
    monkeypatch.setattr(tlsfamily, "find_library", lambda patterns, pid=None, root="": root + copy)
    monkeypatch.setattr(tlsfamily, "mount_namespace", lambda pid: OTHER_NS)
    monkeypatch.setattr(tlsfamily, "mapped_files", lambda pid, patterns: [layer])
    me = os.getpid()
    ways = [lambda: module.namespace_targets(me), lambda: module.new_targets(me)]
    if first == "maps":
        ways.reverse()
    (new,) = ways[0]()
    assert new.refused is None and new.probes
    assert ways[1]() == []
    assert len(module.copies) == 2  # the system's file and this one


def test_a_copy_of_the_same_build_reuses_the_probes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    my_ns = mount_namespace(os.getpid())
    module = discovered(monkeypatch, [in_use(libssl, libssl, my_ns, {1, 2}),
                                      in_use(copy, libssl, OTHER_NS, {10})])
    first, second = module.copies
    assert [c.target.path for c in module.copies] == [libssl, copy]
    assert module.targets == [first.target, second.target]
    assert (first.target.mntns, first.target.seen_as, first.target.processes) == \
        (my_ns, libssl, 2)
    assert (second.target.mntns, second.target.seen_as, second.target.processes) == \
        (OTHER_NS, libssl, 1)
    assert second.key == file_key(copy)
    assert second.target.build_id == first.target.build_id == quick_build_id(libssl)
    assert second.target.version == first.target.version
    # The same probes, on the copy, told rather than fatal if they fail.
    assert all(p.library == libssl and not p.best_effort for p in first.probes)
    assert all(p.library == copy and p.best_effort and not p.optional for p in second.probes)
    assert [(p.kind, p.target, p.fn, p.address) for p in second.probes] == \
        [(p.kind, p.target, p.fn, p.address) for p in first.probes]
    version = first.target.version or "version unknown"
    assert module.attached_line(first) == f"attached {libssl} ({version}; 2 processes)"
    assert module.attached_line(second) == \
        f"attached {libssl} ({version}; mntns {OTHER_NS}, 1 process)"
    assert [module.attached_line(c) for c in module.copies] == \
        [n for n in module.notes if n.startswith("attached ")]
    assert module.refused_files == 0
    # The kernel side: every copy's probes, and the exec tracepoint to see new processes.
    probes = module.probes(Features())
    assert [p for p in probes if p.kind != "tracepoint"] == [*first.probes, *second.probes]
    assert tlsfamily.EXEC_TRACEPOINT in {p.target for p in probes}
    assert "-DWATCH_EXEC=1" in module.cflags(Features())


def test_the_system_file_mapped_by_no_process_is_still_attached(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    module = discovered(monkeypatch, [in_use(copy, "/usr/lib/libssl.so.3", OTHER_NS, {10, 11})])
    first, second = module.copies
    assert first.target.path == libssl and first.target.processes == 0
    assert first.target.mntns == mount_namespace(os.getpid())
    assert module.attached_line(first).endswith("; no process yet)")
    assert module.attached_line(second).startswith("attached /usr/lib/libssl.so.3 (")
    assert module.attached_line(second).endswith(f"; mntns {OTHER_NS}, 2 processes)")


def test_another_build_of_the_same_version_is_inspected_and_attached(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    directory = tmp_path / "rebuilt"
    copy = copy_as(libssl, directory, os.path.basename(libssl))
    other_build(libssl, copy)
    # Its libcrypto beside it, where OpenSSL 3 keeps its version string.
    crypto = os.path.join(os.path.dirname(libssl), "libcrypto.so.3")
    if os.path.exists(crypto):
        copy_as(crypto, directory, "libcrypto.so.3")
    module = discovered(monkeypatch, [in_use(copy, libssl, OTHER_NS, {10})])
    if module.refused_files:  # e.g. a 1.1 libssl whose libcrypto has another name
        pytest.skip(f"the rebuilt copy was refused: {module.notes[-1]}")
    first, second = module.copies
    assert second.target.build_id == quick_build_id(copy) != first.target.build_id
    assert second.target.version == first.target.version
    assert second.probes and all(p.library == copy and p.best_effort for p in second.probes)
    assert {p.fn for p in second.probes} == {p.fn for p in first.probes}


def test_a_copy_whose_flags_differ_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    other_build(libssl, copy)
    flags = OpenSSLModule.library_cflags

    def differ(self: OpenSSLModule) -> list[str]:
        # The copy compiles with other struct offsets than the system's file.
        return [*flags(self), *(["-DOFF_SOMETHING=0x99"] if self.libssl == copy else [])]

    monkeypatch.setattr(OpenSSLModule, "library_cflags", differ)
    module = discovered(monkeypatch, [in_use(copy, "/usr/lib/libssl.so.3", OTHER_NS, {7, 8})])
    assert [c.target.path for c in module.copies] == [libssl]
    assert module.refused_files == 1
    (note,) = [n for n in module.notes if n.startswith("not attached")]
    assert "\n" not in note
    assert note.startswith(f"not attached: /usr/lib/libssl.so.3 (mntns {OTHER_NS}), mapped by "
                           "2 process(es): it is ")
    assert f"whose struct offsets differ from those of {module.targets[0].version}" in note
    assert note.endswith(f"capture it with --libssl {copy}")
    # Looked at once: a process that maps it later is not told again.
    monkeypatch.setattr(tlsfamily, "mapped_files",
                        lambda pid, patterns: [in_use(copy, "/usr/lib/libssl.so.3",
                                                      OTHER_NS, {pid})])
    assert module.new_targets(9) == []
    assert module.refused_files == 1


@pytest.mark.parametrize("limit", [0, 1])
def test_max_libraries_refuses_what_is_beyond_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str, limit: int) -> None:
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    module = discovered(monkeypatch, [in_use(copy, libssl, OTHER_NS, {10})],
                        {"max_libraries": limit})
    assert [c.target.path for c in module.copies] == [libssl]  # the first file always
    assert module.refused_files == 1
    (note,) = [n for n in module.notes if n.startswith("not attached")]
    assert note == (f"not attached: {libssl} (mntns {OTHER_NS}), mapped by 1 process(es): "
                    f"the limit of {limit} library files is reached (--max-libraries)")


def test_the_default_limit_allows_the_copy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str) -> None:
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    module = discovered(monkeypatch, [in_use(copy, libssl, OTHER_NS, {10})],
                        {"max_libraries": 2})
    assert len(module.copies) == 2 and module.refused_files == 0


def test_a_named_library_file_is_not_watched(monkeypatch: pytest.MonkeyPatch,
                                             libssl: str) -> None:
    def never(*args: Any) -> list[MappedFile]:
        raise AssertionError("no discovery when --libssl names the file")

    monkeypatch.setattr(tlsfamily, "files_in_use", never)
    monkeypatch.setattr(tlsfamily, "mapped_files", never)
    module = OpenSSLModule({"libssl": libssl})
    module.init()
    assert not module.watching
    assert [t.path for t in module.targets] == [libssl]
    assert not [n for n in module.notes if n.startswith("attached ")]
    assert module.new_targets(os.getpid()) is None
    assert tlsfamily.EXEC_TRACEPOINT not in {p.target for p in module.probes(Features())}


def test_pid_looks_below_it_and_takes_a_file_it_finds(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, libssl: str,
        child: Callable[[list[str]], Child]) -> None:
    # The process maps no libssl itself (a container's init): the first file found in use
    # below it is inspected, never the system's.
    kid = child([])
    copy = copy_as(libssl, tmp_path, os.path.basename(libssl))
    asked: list[Any] = []

    def fake(patterns: Any, pids: Any = None) -> list[MappedFile]:
        asked.append(pids)
        return [in_use(copy, "/usr/lib/libssl.so.3", OTHER_NS, {kid.pid})]

    monkeypatch.setattr(tlsfamily, "files_in_use", fake)
    monkeypatch.setattr(tlsfamily, "running_pids", lambda: [])
    module = OpenSSLModule({"pid": kid.pid})
    module.init()
    assert asked == [{kid.pid}]
    (only,) = module.copies
    assert only.target.path == copy and only.key == file_key(copy)
    assert (only.target.mntns, only.target.seen_as, only.target.processes) == \
        (OTHER_NS, "/usr/lib/libssl.so.3", 1)


def test_new_targets_of_a_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  libssl: str) -> None:
    system = in_use(libssl, libssl, mount_namespace(os.getpid()), {1})
    module = discovered(monkeypatch, [system])
    copy = copy_as(libssl, tmp_path / "new", os.path.basename(libssl))
    refused = copy_as(libssl, tmp_path / "refused", os.path.basename(libssl))
    maps = {
        20: [],
        21: [replace(system, pids={21})],
        22: [in_use(copy, "/usr/lib/libssl.so.3", OTHER_NS, {22})],
        23: [in_use(refused, "/usr/lib/libssl.so.3", OTHER_NS + 1, {23})],
    }
    monkeypatch.setattr(tlsfamily, "mapped_files", lambda pid, patterns: maps[pid])
    assert module.new_targets(20) is None  # maps none (yet)
    assert module.new_targets(21) == []  # its file has probes
    (new,) = module.new_targets(22) or []
    assert isinstance(new, NewTarget) and new.refused is None
    assert (new.target.path, new.target.seen_as, new.target.mntns, new.target.processes) == \
        (copy, "/usr/lib/libssl.so.3", OTHER_NS, 1)
    assert new.target.build_id == quick_build_id(libssl)
    assert new.probes and all(p.library == copy and p.best_effort for p in new.probes)
    assert new.target in module.targets and module.copies[-1].probes == new.probes
    assert module.new_targets(22) == []  # known now
    # Beyond --max-libraries: said, with no probes, once.
    module.config["max_libraries"] = 2
    (no,) = module.new_targets(23) or []
    assert no.probes == [] and no.refused == \
        "the limit of 2 library files is reached (--max-libraries)"
    assert (no.target.path, no.target.mntns) == (refused, OTHER_NS + 1)
    assert module.refused_files == 1 and module.new_targets(23) == []
    assert no.target not in module.targets


# -- where a process runs, on events and in the models ------------------------------------

CONTAINER = Place(OTHER_NS, "/system.slice/docker-abc.scope", False)
HOST = Place(4026531841, "/user.slice", True)


def test_place_label_and_fields() -> None:
    assert CONTAINER.label() == f"  [mntns {OTHER_NS} cgroup /system.slice/docker-abc.scope]"
    assert HOST.label() == ""
    assert Place(5, "/", False).label() == "  [mntns 5]"
    assert Place(5, None, False).label() == "  [mntns 5]"
    assert Place(None, "/x", False).label() == "  [mntns ? cgroup /x]"
    assert CONTAINER.fields() == {"mntns": OTHER_NS, "cgroup": "/system.slice/docker-abc.scope"}
    conn = make_conn(CONTAINER)
    assert place_label(conn) == CONTAINER.label()
    assert place_label(make_conn(None)) == "" and place_label(None) == ""
    assert place_label(make_conn(HOST)) == ""


def make_conn(place: Place | None, kind: Any = "connect") -> Conn:
    return Conn(1_000, 42, 42, 0, "curl", kind, 5, 0xAB, 2, "10.0.0.1", 40000, "10.0.0.2",
                443, place)


def make_data(place: Place | None, conn: Conn | None = None, data: bytes = b"GET /") -> TlsData:
    return TlsData(2_000, 42, 42, 0, "curl", 5, 0x0304, "write", "SSL_write", 1, data,
                   len(data), conn, place)


def text_of(events: list[Event]) -> str:
    out = io.StringIO()
    TextOutput(out, 0).write_all(events)
    return out.getvalue()


def json_of(events: list[Event]) -> list[dict[str, Any]]:
    out = io.StringIO()
    JsonOutput(out, 0).write_all(events)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_text_model_marks_only_another_namespace() -> None:
    for place in (CONTAINER, Place(OTHER_NS, None, False)):
        conn = make_conn(place)
        text = text_of([conn, make_data(place, conn), make_conn(place, "close")])
        lines = text.splitlines()
        assert lines[0].endswith(f"curl pid 42 fd 5{place.label()}  CONNECT  "
                                 "10.0.0.1:40000 -> 10.0.0.2:443")
        assert lines[1].endswith(f"TLSv1.3{place.label()}")  # the data header
        assert lines[-1].endswith(f"curl pid 42 fd 5{place.label()}  CLOSE")
        assert text.count(f"[mntns {OTHER_NS}") == 3
    # The host's events read as before there were places.
    for here in (HOST, None):
        conn = make_conn(here)
        assert text_of([conn, make_data(here, conn)]) == \
            text_of([make_conn(None), make_data(None, make_conn(None))])
        assert "[mntns" not in text_of([conn, make_data(here, conn)])


def test_json_model_always_has_mntns_and_cgroup() -> None:
    for place, want in ((CONTAINER, CONTAINER.fields()), (HOST, HOST.fields()),
                        (None, {"mntns": None, "cgroup": None})):
        conn = make_conn(place)
        data = make_data(place, conn)
        for obj in json_of([conn, data]):
            assert {k: obj[k] for k in ("mntns", "cgroup")} == want
        # The data event's own line, built without the encoder, says the same.
        line = data.json_line(Style())
        assert json.loads(line) == data.json(Style())
        assert line == json.dumps(data.json(Style()), ensure_ascii=False)


def test_one_style_keeps_places_apart() -> None:
    # The models keep what a thread's calls share, per connection: the place is part of it.
    style, conn = Style(), make_conn(None)
    inside, host = make_data(CONTAINER, conn), make_data(HOST, conn)
    for _ in range(2):
        assert CONTAINER.label() in inside.text(style) and "[mntns" not in host.text(style)
        assert json.loads(inside.json_line(style))["mntns"] == CONTAINER.mntns
        assert json.loads(host.json_line(style))["mntns"] == HOST.mntns


def test_library_attached_lines() -> None:
    late = LibraryAttached(timestamp_ns=5, pid=30, tid=30, uid=0, comm="nginx",
                           path="/usr/lib/libssl.so.3", mntns=OTHER_NS,
                           version="OpenSSL 3.0.2", build_id="ab12", after_ms=12.345)
    assert late.text_line() == (f"ATTACHED /usr/lib/libssl.so.3 (OpenSSL 3.0.2) in mntns "
                                f"{OTHER_NS} 12.3 ms after nginx pid 30 started: what it sent "
                                "before then is not captured")
    bare = replace(late, mntns=None, version=None)
    assert bare.text_line().startswith("ATTACHED /usr/lib/libssl.so.3 12.3 ms after nginx")
    refused = replace(late, refused="no room")
    assert refused.text_line() == (f"NOT ATTACHED /usr/lib/libssl.so.3 (OpenSSL 3.0.2) in "
                                   f"mntns {OTHER_NS}, mapped by nginx pid 30: no room")
    fields = late.json_fields()
    assert {k: fields[k] for k in ("path", "mntns", "version", "build_id", "pid", "comm",
                                   "after_ms", "refused")} == {
        "path": "/usr/lib/libssl.so.3", "mntns": OTHER_NS, "version": "OpenSSL 3.0.2",
        "build_id": "ab12", "pid": 30, "comm": "nginx", "after_ms": 12.345, "refused": None}
    assert late.json(Style())["type"] == "attached"  # type: ignore[index]
    # About the capture itself: no filter hides it.
    assert EventFilter(mntns=1, cgroup="/nowhere", pid=1)(late)


# -- --mntns and --cgroup -------------------------------------------------------------------

def test_filter_by_mntns_and_cgroup() -> None:
    inside = make_data(CONTAINER)
    host = make_data(HOST)
    unknown = make_data(None)
    nested = make_data(Place(OTHER_NS, "/system.slice/docker-abc.scope/init", False))
    lookalike = make_data(Place(OTHER_NS, "/system.slice/docker-abcd.scope", False))
    by_ns = EventFilter(mntns=OTHER_NS)
    assert by_ns.active
    assert [by_ns(e) for e in (inside, host, unknown, nested, lookalike)] == \
        [True, False, False, True, True]
    by_cgroup = EventFilter(cgroup="system.slice/docker-abc.scope/")  # normalised
    assert by_cgroup.active and by_cgroup.cgroup == "/system.slice/docker-abc.scope"
    assert [by_cgroup(e) for e in (inside, host, unknown, nested, lookalike)] == \
        [True, False, False, True, False]
    both = EventFilter(mntns=HOST.mntns, cgroup="/system.slice")
    assert [both(e) for e in (inside, host)] == [False, False]
    everything = EventFilter(cgroup="/")
    assert [everything(e) for e in (inside, host, unknown)] == [True, True, False]
    assert not EventFilter().active
    # An exchange or notice takes its place from its connection.
    conn = make_conn(CONTAINER)
    assert conn.where is CONTAINER and by_ns(conn) and not EventFilter(mntns=1)(conn)


def recording_with_place(tmp_path: Path, fields: dict[str, Any]) -> Path:
    """The demo recording with a "process" fact before its events, as the live layer records
    one for each process the first time it is seen."""
    pid = next(e.pid for e in replay_events(DEMO) if e.process_scoped)
    path = tmp_path / "placed.ecap"
    with Reader(str(DEMO)) as reader:
        items = list(reader)
        meta = reader.metadata
    first = next(i for i in items if isinstance(i, Record))
    with Writer(path, meta) as writer:
        writer.write(Fact(first.map_id, first.recv_ns, "process", {"pid": pid, **fields}))
        for item in items:
            writer.write(item)
    return path


def replayed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["replay", *args]) == 0
    return capsys.readouterr().out


def test_replay_shows_and_filters_by_place(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cgroup = "/system.slice/docker-abc.scope"
    placed = str(recording_with_place(tmp_path, {"mntns": OTHER_NS, "cgroup": cgroup,
                                                 "host": False}))
    plain = replayed(capsys, str(DEMO))
    marked = replayed(capsys, placed)
    label = f"  [mntns {OTHER_NS} cgroup {cgroup}]"
    assert marked != plain and label in marked
    # Only the label is new: the connection lines and the exchange's header carry it.
    assert marked.replace(label, "") == plain
    pid = next(e.pid for e in replay_events(DEMO) if e.process_scoped)
    said = [line for line in marked.splitlines() if f"pid {pid}" in line]
    assert any(line.startswith("=== ") for line in said)
    assert all(label in line for line in said)
    assert replayed(capsys, placed, "--mntns", str(OTHER_NS)) == marked
    assert replayed(capsys, placed, "--cgroup", "/system.slice") == marked
    assert replayed(capsys, placed, "--cgroup", cgroup, "--mntns", str(OTHER_NS)) == marked
    for other in (("--mntns", str(OTHER_NS + 1)), ("--cgroup", "/system.slice/docker-ab"),
                  ("--cgroup", "/user.slice")):
        assert replayed(capsys, placed, *other) == ""
    # A recording that does not say where its processes ran shows nothing for a place.
    assert replayed(capsys, str(DEMO), "--mntns", str(OTHER_NS)) == ""
    objects = [json.loads(line) for line in replayed(capsys, placed, "-m", "json").splitlines()]
    assert objects and all((o["mntns"], o["cgroup"]) == (OTHER_NS, cgroup) for o in objects
                           if "pid" in o and o["type"] != "keylog")


def test_replay_on_the_host_reads_as_before(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ns = mount_namespace(os.getpid())
    placed = str(recording_with_place(tmp_path, {"mntns": ns, "cgroup": "/user.slice",
                                                 "host": True}))
    assert replayed(capsys, placed) == replayed(capsys, str(DEMO))
    assert replayed(capsys, placed, "--mntns", str(ns)) == replayed(capsys, str(DEMO))


def test_replay_mntns_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", str(DEMO), "--mntns", "docker"])
    assert exit_.value.code == 2
    assert "--mntns: invalid int value" in capsys.readouterr().err


# -- the TLS family's process facts ----------------------------------------------------------

def exec_event(pid: int, comm: bytes = b"nginx", ts: int = 777, uid: int = 33) -> bytes:
    return make_event(EXEC.decl, kind=EVENT_EXEC, pid=pid, timestamp_ns=ts, uid=uid, comm=comm)


def data_event(pid: int, payload: bytes = b"hello", offset: int = 0, total: int | None = None,
               fd: int = 7) -> bytes:
    return make_event(data_t, kind=EVENT_SSL_DATA, pid=pid, timestamp_ns=5_000 + offset,
                      start_ns=4_000, ssl=0xABC, tid=pid, uid=0, fd=fd, version=0x0304,
                      total_len=len(payload) if total is None else total, offset=offset,
                      direction=1, func=1, comm=b"curl", data=payload)


def conn_event(pid: int, fd: int = 7) -> bytes:
    return make_event(conn_event_t, kind=EVENT_CONN, pid=pid, timestamp_ns=1_000, sock=1,
                      tid=pid, uid=0, fd=fd, family=2, conn=0, lport=40000, rport=443,
                      laddr=bytes([127, 0, 0, 1]), raddr=bytes([127, 0, 0, 2]), comm=b"curl")


def no_lookup(pid: int, fd: int) -> None:
    return None


def test_an_exec_is_a_process_fact() -> None:
    live = OpenSSLModule({})
    me = os.getpid()
    facts = live.observe(exec_event(me), no_lookup)
    assert facts == [("process", {"pid": me, "mntns": mount_namespace(me),
                                  "cgroup": cgroup_of(me), "host": True, "exec": True,
                                  "ts_ns": 777, "uid": 33, "comm": "nginx"})]
    # Its data afterwards needs no second look.
    assert [w for w, _ in live.observe(data_event(me), no_lookup)] == []
    # A process gone before it was looked at: nowhere known, not the host.
    ((what, fields),) = live.observe(exec_event(NO_PID, b"x" * 16), no_lookup)
    assert (what, fields["mntns"], fields["cgroup"], fields["host"], fields["comm"]) == \
        ("process", None, None, False, "x" * 16)
    # Too short to be an exec event: nothing observed, and a decode error on replay.
    assert live.observe(exec_event(me)[:20], no_lookup) == []
    with pytest.raises(DecodeError, match="exec_event_t has 20 bytes"):
        live.decode("events", exec_event(me)[:20])
    assert list(live.dispatch(live.decode("events", exec_event(me)))) == []


def test_first_event_of_a_process_is_a_process_fact_once() -> None:
    live = OpenSSLModule({})
    (place,) = live.observe(conn_event(NO_PID), no_lookup)  # gone: nowhere known
    assert place == ("process", {"pid": NO_PID, "mntns": None, "cgroup": None, "host": False})
    assert live.observe(data_event(NO_PID), no_lookup) == []
    me = os.getpid()
    (place,) = live.observe(data_event(me), no_lookup)
    assert place == ("process", {"pid": me, "mntns": mount_namespace(me),
                                 "cgroup": cgroup_of(me), "host": True})
    assert live.observe(data_event(me, b"again"), no_lookup) == []


def test_process_facts_give_events_their_place() -> None:
    replay = OpenSSLModule({})
    cgroup = "/system.slice/docker-abc.scope"
    for pid in (100, 101):
        assert list(replay.apply("process", {"pid": pid, "mntns": OTHER_NS,
                                             "cgroup": cgroup, "host": False})) == []
    (conn,) = replay.dispatch(replay.decode("events", conn_event(100)))
    (data,) = replay.dispatch(replay.decode("events", data_event(100)))
    assert isinstance(conn, Conn) and isinstance(data, TlsData)
    assert conn.place == data.place == Place(OTHER_NS, cgroup, False)
    assert data.conn is conn and data.where is data.place
    # A call in chunks is joined with its place too; one object per place.
    halves = [data_event(101, b"ab", 0, 4), data_event(101, b"cd", 2, 4)]
    (joined,) = [e for raw in halves for e in replay.dispatch(replay.decode("events", raw))]
    assert isinstance(joined, TlsData) and joined.data == b"abcd"
    assert joined.place is data.place
    # A process no fact spoke of: unknown.
    (elsewhere,) = replay.dispatch(replay.decode("events", data_event(102)))
    assert isinstance(elsewhere, TlsData) and elsewhere.place is None


@pytest.mark.parametrize("fields", [{}, {"pid": "x"}, {"pid": 1, "mntns": "abc"},
                                    {"pid": None}])
def test_bad_process_facts_are_decode_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="process observation"):
        list(OpenSSLModule({}).apply("process", fields))


def attached_fields(n: int, **over: Any) -> dict[str, Any]:
    fields = {"ts_ns": 1_000 + n, "pid": 200 + n, "comm": "nginx", "path":
              f"/usr/lib/libssl.so.3.{n}", "mntns": OTHER_NS, "version": "OpenSSL 3.0.2",
              "build_id": "ab12", "after_ms": 3.5, "refused": None}
    fields.update(over)
    return fields


def test_attached_facts_become_events_and_the_summary_names_some() -> None:
    module = OpenSSLModule({})
    (late,) = module.apply("attached", attached_fields(0))
    assert isinstance(late, LibraryAttached)
    assert (late.timestamp_ns, late.pid, late.tid, late.comm, late.path, late.mntns,
            late.version, late.build_id, late.after_ms, late.refused) == \
        (1_000, 200, 200, "nginx", "/usr/lib/libssl.so.3.0", OTHER_NS, "OpenSSL 3.0.2",
         "ab12", 3.5, None)
    assert module.summary() == [f"tls: {late.text_line()}"]
    (refused,) = module.apply("attached", attached_fields(1, refused="no room", mntns=None))
    assert isinstance(refused, LibraryAttached) and refused.refused == "no room"
    assert refused.mntns is None


def test_summary_lists_at_most_late_shown() -> None:
    module = OpenSSLModule({})
    extra = 3
    late = [e for n in range(tlsfamily.LATE_SHOWN + extra)
            for e in module.apply("attached", attached_fields(n))]
    lines = module.summary()
    assert lines[:tlsfamily.LATE_SHOWN] == [f"tls: {e.text_line()}"
                                            for e in late[:tlsfamily.LATE_SHOWN]]
    assert lines[tlsfamily.LATE_SHOWN:] == [
        f"tls: {extra} more library files attached or refused during the capture (the "
        "recording lists each)"]


@pytest.mark.parametrize("broken", [{"pid": "x"}, {"after_ms": "soon"}, {"ts_ns": None},
                                    {"mntns": "abc"}])
def test_bad_attached_facts_are_decode_errors(broken: dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="attached observation"):
        list(OpenSSLModule({}).apply("attached", attached_fields(0, **broken)))


@pytest.mark.parametrize("missing", ["ts_ns", "pid", "comm", "path", "mntns", "after_ms"])
def test_attached_facts_missing_a_field_are_decode_errors(missing: str) -> None:
    fields = attached_fields(0)
    del fields[missing]
    with pytest.raises(DecodeError, match="attached observation"):
        list(OpenSSLModule({}).apply("attached", fields))

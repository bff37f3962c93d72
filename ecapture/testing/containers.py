"""Throw-away "containers" made of Linux namespaces, for live tests of TLS capture in processes
whose TLS library is a different file (another inode) than the host's.

The rule of this layer: it only drives processes and mounts through util-linux ``unshare``,
``nsenter`` and ``mount``; it needs root and nothing else (no bcc, no network). A container is
a private mount namespace, optionally with its own pid namespace, in which each named host
library is replaced by a bind-mounted copy kept in the caller's workdir. The network namespace
stays the host's, so a server started inside is reachable on 127.0.0.1. Everything started is
killed on exit; the mounts die with their namespace, and nothing outside the workdir is
written. ``docker_container`` offers the same surface over a real engine container (podman or
docker, image imported from host files, never pulled), for tests that want one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

DEFAULT_LIBRARIES = ("libssl.so.3", "libcrypto.so.3")


def missing_tools() -> str | None:
    """One line naming what this machine lacks to build containers, or None when nothing."""
    missing = [tool for tool in ("unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return f"missing: {', '.join(missing)}" if missing else None


def host_library(name: str) -> Path:
    """The real file behind a library soname as the host's dynamic linker cache resolves it."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    # Lines look like "\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3".
    for line in out.splitlines():
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)$", line)
        if match and match[1] == name and "x86-64" in match[2]:
            # Bind over the real path: /lib is often a symlink into /usr/lib.
            return Path(os.path.realpath(match[3]))
    raise FileNotFoundError(f"{name} is not in the dynamic linker cache")


@dataclass
class Container:
    """A running namespace set; ``pid`` is the host pid of the process inside it."""

    pid: int
    pid_ns: bool
    # soname -> (the copy, the system path where processes inside find it)
    libraries: dict[str, tuple[Path, Path]]
    _started: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)
    _init_stdin: IO[str] | None = field(default=None, repr=False)
    # how an engine enters its container (``podman exec NAME``), instead of nsenter
    _enter: list[str] | None = field(default=None, repr=False)

    @functools.cached_property
    def mntns(self) -> int:
        """Inode number of the container's mount namespace (what /proc/PID/ns/mnt names),
        read while it runs and kept: the tests check recordings after it is gone."""
        return os.stat(f"/proc/{self.pid}/ns/mnt").st_ino

    def library_inode(self, name: str) -> tuple[int, int]:
        """(st_dev, st_ino) of library ``name`` at its system path as seen inside."""
        system_path = self.libraries[name][1]
        st = os.stat(f"/proc/{self.pid}/root{system_path}")
        return st.st_dev, st.st_ino

    def command(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """``argv`` wrapped in the call that runs it inside the container: nsenter, or the
        engine's own exec, which also puts it in the container's cgroup."""
        if self._enter is not None:
            workdir = [f"--workdir={os.fspath(cwd)}"] if cwd is not None else []
            return [*self._enter[:-1], *workdir, self._enter[-1], *argv]
        wrapped = ["nsenter", f"--target={self.pid}", "--mount"]
        if self.pid_ns:
            wrapped.append("--pid")
        if cwd is not None:
            # Entering a mount namespace resets the working directory to its root.
            wrapped.append(f"--wd={os.fspath(cwd)}")
        return [*wrapped, "--", *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside; keyword arguments go to subprocess.Popen. It is killed on exit."""
        # A session of its own lets exit kill nsenter and the child it forked together.
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(argv, kw.get("cwd")), **kw)
        self._started.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside to completion; keyword arguments go to subprocess.run."""
        return subprocess.run(self.command(argv, kw.get("cwd")), **kw)

    def spawn(self, command: str) -> None:
        """Have the container's init start shell ``command`` as its child, as a container's
        own processes are started (``popen`` starts them from outside, as ``exec`` does).
        Its output is discarded unless ``command`` redirects it."""
        if self._init_stdin is None:
            raise RuntimeError("this container's init takes no commands")
        self._init_stdin.write(command.replace("\n", " ") + "\n")
        self._init_stdin.flush()

    def host_pid(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
        """Host pid of the command a popen() started (with a pid namespace, nsenter's child)."""
        if not self.pid_ns:
            return proc.pid  # nsenter execs the command itself
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if children := _children(proc.pid):
                return children[0]
            time.sleep(0.01)  # nsenter forks only after it has entered the namespaces
        raise RuntimeError(f"nsenter {proc.pid} started no command")

    def _stop(self) -> None:
        if self.pid_ns:
            # Killing pid 1 of a pid namespace kills every process in it; each nsenter then reaps
            # its child and exits by itself, so no zombie is left to the host's init.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for proc in self._started:
            try:
                proc.wait(timeout=5 if self.pid_ns else 0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _close(proc)
        if not self.pid_ns:
            # init leads its own process group, with the children it spawned.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def _init_script(libraries: dict[str, tuple[Path, Path]]) -> str:
    mounts = "".join(f"mount --bind '{copy}' '{target}'\n" for copy, target in libraries.values())
    # "ready" is printed only once every mount is in place; `set -e` makes a failed mount end
    # the shell, which the parent sees as end of file instead of the line. init then execs
    # anew, as a runtime starts a container's entrypoint once its file system is ready, and
    # each line it reads is a command it starts as its own child (Container.spawn).
    loop = 'echo ready; while read -r line; do sh -c "$line" </dev/null >/dev/null 2>&1 & done'
    return f"set -e\n{mounts}exec sh -c '{loop}; exec sleep infinity'\n"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _close(proc: subprocess.Popen[Any]) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def container(
    workdir: Path, libraries: Sequence[str] = DEFAULT_LIBRARIES, pid_ns: bool = True
) -> Iterator[Container]:
    """A container whose ``libraries`` are copies in ``workdir`` (one workdir per container)."""
    if reason := missing_tools():
        raise RuntimeError(f"cannot build a namespace container: {reason}")
    workdir.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, tuple[Path, Path]] = {}
    for name in libraries:
        system_path = host_library(name)
        copy = workdir / name
        # Same bytes, new inode: that difference is what the tests are about.
        shutil.copyfile(system_path, copy)
        mapping[name] = (copy.resolve(), system_path)
    argv = ["unshare", "--mount", "--propagation", "private"]
    if pid_ns:
        argv += ["--pid", "--fork", "--mount-proc"]
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    init = subprocess.Popen(
        [*argv, "sh", "-c", _init_script(mapping)], **pipes, stdin=subprocess.PIPE,
        start_new_session=True,
    )
    box: Container | None = None
    try:
        assert init.stdout is not None and init.stderr is not None
        if init.stdout.readline().strip() != "ready":
            init.wait(timeout=10)
            raise RuntimeError(f"container init failed: {init.stderr.read().strip()}")
        # With --fork, unshare's only child is the namespace's pid 1 (the shell, now sleep).
        pid = _children(init.pid)[0] if pid_ns else init.pid
        box = Container(pid=pid, pid_ns=pid_ns, libraries=mapping, _init_stdin=init.stdin)
        _ = box.mntns  # known from now on
        yield box
    finally:
        if box is not None:
            box._stop()
        try:
            # unshare --fork exits once its child is gone; only a failed start needs the kill.
            init.wait(timeout=0 if box is None else 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(init.pid, signal.SIGKILL)
            init.wait()
        _close(init)


# Podman as Debian ships it, run with runc: crun refuses hosts whose cgroup v2 hierarchy still
# holds a controller next to v1 ones. ("docker",) works too when a daemon answers.
PODMAN = ("podman", "--runtime", "runc")


# Where the root file system is itself overlayfs (the kernel matrix's guests), podman's
# overlay driver cannot run: its vfs driver can, with a store of its own so that the
# machine's podman storage (made with another driver) is left alone.
VFS_STORE = ("--storage-driver", "vfs", "--root", "/var/tmp/ecapture-podman/storage",
             "--runroot", "/run/ecapture-podman")


def missing_docker(engine: Sequence[str] = PODMAN) -> str | None:
    """One line saying why ``docker_container`` cannot work here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in (engine[0], *(["runc"] if "runc" in engine else []), "nsenter", "ldd", "tar"):
        if shutil.which(tool) is None:
            return f"missing: {tool}"
    return _engine_info(tuple(engine))


@functools.cache
def _engine_info(engine: tuple[str, ...]) -> str | None:
    """Why ``engine info`` fails, or None; asked once per engine (it takes a while)."""
    probe = subprocess.run([*engine, "info"], capture_output=True, text=True, timeout=60)
    lines = (probe.stderr.strip() or "no output").splitlines()
    return None if probe.returncode == 0 else f"{engine[0]} info failed: {lines[-1]}"


def working_engine(engine: Sequence[str] = PODMAN) -> Sequence[str]:
    """``engine``, or podman with its vfs store where overlay storage cannot run here."""
    if engine[0] == "podman" and _engine_info(tuple(engine)) is not None \
            and _engine_info((*engine, *VFS_STORE)) is None:
        return (*engine, *VFS_STORE)
    return engine


def _host_rootfs(root: Path, programs: Sequence[str]) -> None:
    """A root file system of host ``programs`` and the libraries ldd says they load."""
    # The system's own programs: a shim or script earlier on PATH would not run in the image.
    binaries = [shutil.which(p, path="/usr/bin:/bin") or p for p in programs]
    ldd = subprocess.run(["ldd", *binaries], capture_output=True, text=True, check=True).stdout
    # Keep the host's merged-/usr links (/lib64 -> usr/lib64 holds the ELF interpreter).
    for name in ("bin", "sbin", "lib", "lib64"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(os.readlink(Path("/", name)))
    for path in {*binaries, *re.findall(r"(/\S+\.so[^\s:]*) \(0x", ldd)}:
        real = Path(os.path.realpath(path))
        (root / real.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, root / real.relative_to("/"))
        alias = root / Path(os.path.realpath(Path(path).parent)).relative_to("/") / Path(path).name
        if not alias.exists():
            alias.parent.mkdir(parents=True, exist_ok=True)
            alias.symlink_to(real)
    for tree in ("etc/ssl", "usr/lib/ssl", "etc/ld.so.conf.d"):
        if Path("/", tree).is_dir():
            shutil.copytree(Path("/", tree), root / tree, symlinks=True)
    shutil.copy2("/etc/ld.so.conf", root / "etc/ld.so.conf")
    subprocess.run(["ldconfig", "-r", str(root)], check=True)


@contextlib.contextmanager
def docker_container(
    workdir: Path,
    programs: Sequence[str] = ("sh", "sleep", "curl", "openssl"),
    libraries: Sequence[str] = DEFAULT_LIBRARIES,
    engine: Sequence[str] = PODMAN,
) -> Iterator[Container]:
    """A real engine container on the host network, from an image of host files imported
    offline (no registry): its libraries are files of the engine's storage, not the host's."""
    engine = working_engine(engine)
    if reason := missing_docker(engine):
        raise RuntimeError(f"cannot run an engine container: {reason}")
    root = workdir / "rootfs"
    root.mkdir(parents=True)
    _host_rootfs(root, programs)
    subprocess.run(["tar", "-C", str(root), "-cf", str(workdir / "rootfs.tar"), "."], check=True)
    tag = f"localhost/ecapture-test:{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(
        [*engine, "import", str(workdir / "rootfs.tar"), tag], check=True, capture_output=True
    )
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    # Engines ask for more than a sandbox without CAP_SYS_RESOURCE may grant.
    limits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
    run = [*engine, "run", "-d", "--network", "host", *limits, tag, "sleep", "infinity"]
    name = ""
    box: Container | None = None
    try:
        name = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
        inspect = [*engine, "inspect", "-f", "{{.State.Pid}}", name]
        pid = int(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
        mapping = {
            n: (Path(f"/proc/{pid}/root{host_library(n)}"), host_library(n)) for n in libraries
        }
        box = Container(pid=pid, pid_ns=True, libraries=mapping,
                        _enter=[*engine, "exec", name])
        _ = box.mntns  # known from now on
        yield box
    finally:
        if box is not None:
            box._stop()
        if name:
            subprocess.run([*engine, "rm", "-f", name], capture_output=True)
        subprocess.run([*engine, "rmi", "-f", tag], capture_output=True)

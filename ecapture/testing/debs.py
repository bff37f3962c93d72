"""Debian packages as test programs: another release's libssl, openssl or node, unpacked
(never installed) into a cache directory, to be run with LD_LIBRARY_PATH.

The rule of this layer: a package is found by name in the archive's own index
(``dists/<suite>/main/binary-<arch>/Packages.xz``), the newest version among the suites
asked for wins, its SHA-256 from that index is checked, and it is unpacked with
``dpkg-deb -x`` into ``$XDG_CACHE_HOME/ecapture-tests`` (``~/.cache/ecapture-tests``): a
second run downloads nothing. Every failure (no network, no dpkg-deb, no such package) is
:class:`DebUnavailable` with one line saying why, which a test turns into a skip.

Nothing is installed and nothing outside the cache directory is written.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Over https: the index is not signature-checked here, so the transport vouches for it.
MIRROR = os.environ.get("ECAPTURE_DEBIAN_MIRROR", "https://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("ECAPTURE_DEBIAN_SECURITY_MIRROR",
                                 "https://deb.debian.org/debian-security")
TIMEOUT = 60  # seconds per download: a test waits no longer for the network


class DebUnavailable(Exception):
    """A package could not be had (network, index, checksum, dpkg-deb): the reason."""


@dataclass(frozen=True)
class DebPackage:
    """One entry of a suite's Packages index."""

    name: str
    version: str
    suite: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Unpacked:
    """Packages unpacked into one directory tree, as they would be installed under /."""

    root: Path
    packages: tuple[DebPackage, ...]

    def version(self, name: str) -> str:
        return next(p.version for p in self.packages if p.name == name)

    def path(self, relative: str) -> Path:
        return self.root / relative.lstrip("/")

    def library_path(self, arch: str = "amd64") -> str:
        """The LD_LIBRARY_PATH that makes the unpacked libraries win over the system's."""
        triplet = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[arch]
        dirs = [self.root / "usr/lib" / triplet, self.root / "lib" / triplet,
                self.root / "usr/lib"]
        return ":".join(str(d) for d in dirs if d.is_dir())


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ecapture-tests"


def _mirror(suite: str, mirror: str | None) -> str:
    if mirror:
        return mirror.rstrip("/")
    return SECURITY_MIRROR if suite.endswith("-security") else MIRROR


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise DebUnavailable(f"cannot download {url}: {e}") from None
    tmp.replace(dest)


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def index(suite: str, arch: str = "amd64", cache: Path | None = None,
          mirror: str | None = None) -> dict[str, DebPackage]:
    """A suite's packages by name (its Packages.xz, downloaded once per cache). ``mirror``:
    another archive of the same layout (Ubuntu's); by default Debian's."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    base = _mirror(suite, mirror)
    host = urllib.parse.urlsplit(base).netloc or "local"
    path = cache / f"Packages_{host}_{suite}_{arch}.xz"
    if not path.exists():
        _download(f"{base}/dists/{suite}/main/binary-{arch}/Packages.xz", path)
    try:
        text = lzma.decompress(path.read_bytes()).decode("utf-8", "replace")
    except lzma.LZMAError as e:
        path.unlink(missing_ok=True)
        raise DebUnavailable(f"{suite} index is not valid xz: {e}") from None
    found: dict[str, DebPackage] = {}
    for f in _stanzas(text):
        if {"Package", "Version", "Filename", "SHA256"} <= f.keys():
            found[f["Package"]] = DebPackage(f["Package"], f["Version"], suite,
                                             f"{base}/{f['Filename']}", f["SHA256"])
    return found


def _newer(a: str, b: str) -> bool:
    """Whether Debian version a is newer than b (dpkg's own ordering)."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b],
                          check=False).returncode == 0


def find(names: Iterable[str], suites: Iterable[str], arch: str = "amd64",
         cache: Path | None = None, mirror: str | None = None) -> list[DebPackage]:
    """The newest version of each package among the suites (e.g. a release and its
    security updates)."""
    suites = tuple(suites)
    indexes = [index(s, arch, cache, mirror) for s in suites]
    chosen: list[DebPackage] = []
    for name in names:
        best: DebPackage | None = None
        for idx in indexes:
            pkg = idx.get(name)
            if pkg and (best is None or _newer(pkg.version, best.version)):
                best = pkg
        if best is None:
            raise DebUnavailable(f"package {name} is in none of {', '.join(suites)}")
        chosen.append(best)
    return chosen


def _fetch_deb(pkg: DebPackage, cache: Path) -> Path:
    path = cache / "debs" / pkg.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _download(pkg.url, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != pkg.sha256:
        path.unlink()
        raise DebUnavailable(f"{path.name}: SHA-256 {digest} is not the index's {pkg.sha256}")
    return path


def unpack(names: Iterable[str], suites: Iterable[str], arch: str = "amd64",
           cache: Path | None = None, mirror: str | None = None) -> Unpacked:
    """Packages (newest among ``suites``) unpacked together under one root in the cache."""
    if shutil.which("dpkg-deb") is None:
        raise DebUnavailable("dpkg-deb is not installed")
    cache = cache or cache_dir()
    names, suites = tuple(names), tuple(suites)
    # What the names resolved to is kept too: the cached indexes do not change, and a second
    # run then reads no index (bookworm's takes seconds to parse).
    asked = hashlib.sha256(repr((names, suites, arch, mirror)).encode()).hexdigest()[:16]
    resolved = cache / "resolved" / f"{asked}.json"
    try:
        packages = tuple(DebPackage(**p) for p in json.loads(resolved.read_text()))
    except (OSError, ValueError, TypeError):
        packages = tuple(find(names, suites, arch, cache, mirror))
        resolved.parent.mkdir(parents=True, exist_ok=True)
        resolved.write_text(json.dumps([p.__dict__ for p in packages]))
    key = hashlib.sha256("\n".join(p.url for p in packages).encode()).hexdigest()[:16]
    root = cache / "roots" / f"{'+'.join(p.name for p in packages)[:80]}-{key}"
    if root.is_dir():
        return Unpacked(root, packages)
    debs = [_fetch_deb(p, cache) for p in packages]
    root.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked beside the final place, then renamed: a run stopped half-way leaves no root
    # that a later run would take for complete.
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
    try:
        for deb in debs:
            done = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                raise DebUnavailable(f"dpkg-deb -x {deb.name}: {done.stderr.strip()}")
        tmp.chmod(0o755)
        try:
            tmp.rename(root)
        except OSError:
            if not root.is_dir():  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Unpacked(root, packages)


def unpack_or_skip(names: Iterable[str], suites: Iterable[str], arch: str = "amd64",
                   mirror: str | None = None) -> Unpacked:
    """:func:`unpack` for a test: a package that cannot be had skips the test with the
    reason, and fails it under ECAPTURE_REQUIRE_LIVE=1 as the plugin's own checks do."""
    from ecapture.testing.plugin import unavailable

    try:
        return unpack(names, suites, arch, mirror=mirror)
    except DebUnavailable as e:
        unavailable(str(e))

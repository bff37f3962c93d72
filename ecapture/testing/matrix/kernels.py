"""Fetch Debian kernels and their headers for the local matrix, without installing them.

Names are resolved from the private apt index that ``scripts/matrix-setup.sh`` builds,
never hard-coded: Debian moves ABI numbers (6.1.0-56 today) with every update. A series such
as "6.1" resolves to the newest ``linux-headers-<V>-amd64`` whose V belongs to it. Extracted
trees are cached under the matrix cache; a second run only checks them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("ECAPTURE_MATRIX_CACHE", Path.home() / ".cache/ecapture-matrix"))
FLAVOUR = "amd64"

_HEADERS = re.compile(r"^linux-headers-(\d+\.\d+(?:\.\d+)?(?:-\d+)?(?:\+deb\d+)?)-" + FLAVOUR + "$")


class KernelError(Exception):
    """A kernel could not be resolved or fetched; the message says which and why."""


@dataclass(frozen=True)
class Kernel:
    series: str  # what was asked for, e.g. "6.1"
    release: str  # uname -r of the guest, e.g. "6.1.0-56-amd64"
    vmlinuz: Path
    moddir: Path  # <root>/lib/modules/<release>, where vng looks for modules

    @property
    def label(self) -> str:
        return self.release


def version_key(text: str) -> tuple[int, ...]:
    """Sort key for Debian kernel versions: numbers in order ("6.12.118+deb13" > "6.12.9")."""
    return tuple(int(n) for n in re.findall(r"\d+", text))


def in_series(version: str, series: str) -> bool:
    """"6.1" holds 6.1.0-56 but not 6.12.118; "7" holds every 7.x."""
    return version == series or version.startswith(series + ".") or version.startswith(series + "-")


def newest_in_series(names: list[str], series: str) -> str | None:
    """The newest V among ``linux-headers-V-amd64`` names that belongs to ``series``."""
    versions = [m.group(1) for n in names if (m := _HEADERS.match(n))]
    matching = [v for v in versions if in_series(v, series)]
    return max(matching, key=version_key) if matching else None


def depends(text: str) -> list[str]:
    """Package names on the ``Depends:`` lines of ``apt-cache depends`` output, alternatives
    (``|Depends:``) included, virtual packages (``<name>``) left out."""
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.strip().lstrip("|").startswith("Depends:") and "<" not in line]


class Apt:
    """apt-get/apt-cache with the matrix's private configuration."""

    def __init__(self, cache: Path = CACHE):
        self.conf = cache / "apt" / "apt.conf"
        if not self.conf.exists():
            raise KernelError(f"{self.conf} is missing: run scripts/matrix-setup.sh first")

    def _run(self, *cmd: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "APT_CONFIG": str(self.conf)}
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelError(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
        return done.stdout

    def pkgnames(self, prefix: str) -> list[str]:
        return self._run("apt-cache", "pkgnames", prefix).split()

    def depends(self, package: str) -> list[str]:
        return depends(self._run("apt-cache", "depends", package))

    def download(self, packages: list[str], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self._run("apt-get", "download", "-qq", *packages, cwd=dest)


def resolve(series: str, apt: Apt) -> str:
    """The kernel release (uname -r) a series stands for today."""
    version = newest_in_series(apt.pkgnames("linux-headers-"), series)
    if version is None:
        raise KernelError(f"no linux-headers-*-{FLAVOUR} for kernel series {series} in the "
                          "matrix's apt index")
    return f"{version}-{FLAVOUR}"


def packages_for(release: str, apt: Apt) -> list[str]:
    """The debs holding the kernel image, its modules and its headers. From 6.1x on Debian
    splits the image: linux-binary-V holds vmlinuz, linux-modules-V the modules."""
    image = f"linux-image-{release}"
    image_deps = apt.depends(image)
    split = [d for d in image_deps
             if d in (f"linux-binary-{release}", f"linux-modules-{release}")]
    headers = f"linux-headers-{release}"
    common = [d for d in apt.depends(headers) if d.endswith("-common")]
    return [*(split or [image]), headers, *common]


def fetch(series: str, cache: Path = CACHE) -> Kernel:
    """Resolve, download and extract one kernel with its headers (cached)."""
    apt = Apt(cache)
    release = resolve(series, apt)
    root = cache / "kernels" / release
    done_marker = root / ".extracted"
    if not done_marker.exists():
        if root.exists():
            shutil.rmtree(root)
        debs = cache / "kernels" / "debs" / release
        pkgs = packages_for(release, apt)
        apt.download(pkgs, debs)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        shutil.rmtree(debs)
    # vng looks for modules at <root>/lib/modules/<release> beside <root>/boot/vmlinuz;
    # merged-/usr debs (trixie) ship them under usr/lib only.
    if (root / "usr/lib/modules").is_dir() and not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    moddir = next((d for d in (root / "lib/modules" / release, root / "usr/lib/modules" / release)
                   if d.is_dir()), None)
    images = (root / "boot" / f"vmlinuz-{release}", root / "usr/lib/modules" / release / "vmlinuz")
    vmlinuz = next((p for p in images if p.exists()), None)
    if moddir is None or vmlinuz is None:
        raise KernelError(f"{release}: no vmlinuz or modules directory in the extracted debs")
    # The debs link build/ and source/ to absolute /usr/src paths of an installed system;
    # point them into the extracted tree, where the guest (which sees the host's /) finds them.
    src = root / "usr/src"
    build = src / f"linux-headers-{release}"
    commons = sorted(src.glob("linux-headers-*-common"))
    for link, target in (("build", build), ("source", commons[0] if commons else None)):
        if target is not None and target.is_dir():
            path = moddir / link
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(target)
    if not (build / "include").is_dir():
        raise KernelError(f"{release}: headers tree {build} is missing")
    done_marker.touch()
    return Kernel(series, release, vmlinuz, moddir)

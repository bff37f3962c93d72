"""Every prerequisite failure of live capture is one line on stderr and a non-zero exit,
before anything is attached."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from live_helpers import ecap, one_line_error, unprivileged_python

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]


def test_not_root() -> None:
    # pytest's tmp_path sits in a 0700 directory: nobody needs one of its own.
    workdir = Path(tempfile.mkdtemp(prefix="ecapture-noroot-", dir="/tmp"))
    try:
        out = subprocess.run([*unprivileged_python(workdir), "-m", "ecapture", "tls"],
                             capture_output=True, text=True, cwd="/", timeout=60)
    finally:
        shutil.rmtree(workdir)
    one_line_error(out, "live capture needs root")


def test_bcc_missing() -> None:
    out = ecap("tls", prelude="import ecapture.live.bccload as b; b.SEARCH = (); "
                              "sys.modules['bcc'] = None; ")
    one_line_error(out, "apt-get install python3-bpfcc")


def test_kernel_headers_missing() -> None:
    out = ecap("tls", prelude="import ecapture.live.prereq as p; "
                              "p.kernel_release = lambda: '0.0.0-no-such-kernel'; ")
    one_line_error(out, "kernel headers not found at /lib/modules/0.0.0-no-such-kernel/build")


def test_library_path_missing() -> None:
    one_line_error(ecap("tls", "--libssl", "/nonexistent/libssl.so.3"), "no such file")


def test_symbol_missing() -> None:
    # libcrypto is a real OpenSSL library, but SSL_read is not in it.
    from ecapture.targets import find_library

    libcrypto = find_library([r"libcrypto\.so\.3", r"libcrypto\.so\.1\.1"])
    assert libcrypto
    one_line_error(ecap("tls", "--libssl", libcrypto), "symbol SSL_read not found")


def test_library_not_found_for_a_process_without_it() -> None:
    # sleep maps no libssl: attaching to the system's instead would capture nothing of it.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        one_line_error(ecap("tls", "--pid", str(sleeper.pid)),
                       f"process {sleeper.pid} maps no OpenSSL libssl")
    finally:
        sleeper.kill()
        sleeper.wait()


def _tls_library_modules() -> list[str]:
    from ecapture import modules
    from ecapture.modules.tlsfamily import TlsLibraryModule

    return [m.name for m in modules.MODULES if issubclass(m, TlsLibraryModule)]


@pytest.mark.parametrize("name", _tls_library_modules())
def test_every_tls_library_refuses_a_pid_that_maps_none(name: str) -> None:
    """--pid picks the library the process maps; a process with none of it gets one line
    naming the process, not probes on the system's copy that would never fire for it."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        out = ecap(name, "--pid", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    one_line_error(out, f"process {sleeper.pid} maps no ")


def test_tls_on_boringssl_points_to_its_module(tmp_path: Path) -> None:
    from ecapture.modules.boringssl import find_boringssl
    from ecapture.testing.plugin import unavailable

    libssl = find_boringssl()
    if libssl is None:
        unavailable("no BoringSSL libssl on this machine (apt-get install android-boringssl)")
    out = ecap("tls", "--libssl", libssl, "-m", "keylog", "-k", str(tmp_path / "k.log"))
    one_line_error(out, "is BoringSSL: capture its keys with `ecapture boringssl`")

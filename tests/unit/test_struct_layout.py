"""C layout parity, driven by the registry: every struct on every map of every registered
module against the C compiler's offsetof/sizeof, and every kind number against the C
constant that names it. A registered module without its kern/ files fails here too.

The kern/ headers are compiled by the host C compiler into a tiny program that prints each
field's offset and size, so a field added, removed or reordered on either side fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture import modules
from ecapture.structs import layout
from ecapture.structs.bash import BASH_LINE_MAX
from ecapture.structs.layout import KernelStruct
from ecapture.structs.packets import PACKET_CHUNK_SIZE
from ecapture.structs.tls import TLS_CHUNK_SIZE

KERN = Path(__file__).resolve().parents[2] / "kern"

# Every (kind number, struct) of every map of every registered module, once.
CASES: dict[tuple[str, int], KernelStruct] = {
    (ks.name, kind): ks
    for module in modules.MODULES for m in module.maps for kind, ks in m.structs.items()}


def compile_and_run(tmp_path: Path, header: str, body: list[str]) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler: install gcc (the layout test is not optional)")
    src = tmp_path / "layout.c"
    src.write_text("\n".join([f'#include "{header}"', "#include <stdio.h>",
                              "#include <stddef.h>", "int main(void) {", *body,
                              "  return 0;", "}"]) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", str(KERN), "-o", str(exe), str(src)], check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def c_layout(tmp_path: Path, header: str, struct: str, fields: list[str]) -> dict[str, int]:
    lines = [f'  printf("sizeof %zu\\n", sizeof(struct {struct}));']
    for f in fields:
        lines.append(f'  printf("{f} %zu %zu\\n", offsetof(struct {struct}, {f}), '
                     f"sizeof(((struct {struct} *)0)->{f}));")
    result: dict[str, int] = {}
    for line in compile_and_run(tmp_path, header, lines).splitlines():
        parts = line.split()
        if parts[0] == "sizeof":
            result["sizeof"] = int(parts[1])
        else:
            result[parts[0]] = int(parts[1])
            result[parts[0] + ".size"] = int(parts[2])
    return result


@pytest.mark.parametrize("module", modules.MODULES, ids=lambda m: m.name)
def test_every_module_has_its_kern_files(module: type[modules.Module]) -> None:
    for name in (module.source, module.header):
        assert (KERN / name).is_file(), f"{module.name}: kern/{name} is missing"
    assert module.maps, f"{module.name} declares no event maps"
    for m in module.maps:
        assert m.structs, f"{module.name}/{m.name} declares no structs"


@pytest.mark.parametrize("ks", CASES.values(), ids=[f"{n}-{k}" for n, k in CASES])
def test_layout_matches_c(tmp_path: Path, ks: KernelStruct) -> None:
    assert (KERN / ks.header).is_file(), f"{ks.name}: kern/{ks.header} is missing"
    fields = layout(ks.decl)
    c = c_layout(tmp_path, ks.header, ks.name, [f.name for f in fields])
    for f in fields:
        assert c[f.name] == f.offset, f"{ks.name}.{f.name}: C offset {c[f.name]}, ours {f.offset}"
        if f.size is not None:
            assert c[f.name + ".size"] == f.size, f"{ks.name}.{f.name}: size differs"
    last = fields[-1]
    if last.size is None:
        # Variable-length tail: the C array is the maximum, sent only up to its length.
        assert c["sizeof"] == last.offset + c[last.name + ".size"]
    else:
        assert c["sizeof"] == last.offset + last.size, f"{ks.name}: sizeof differs (padding?)"


@pytest.mark.parametrize(("ks", "kind"), [(ks, kind) for (_, kind), ks in CASES.items()],
                         ids=[f"{n}-{k}" for n, k in CASES])
def test_kind_matches_c(tmp_path: Path, ks: KernelStruct, kind: int) -> None:
    """The kind every event starts with: the number a map declares against the C constant
    the program writes, so a renumbering on one side fails here, not as decode errors."""
    out = compile_and_run(tmp_path, ks.header, [f'  printf("%d\\n", (int){ks.kind});'])
    assert int(out) == kind, f"{ks.name}: {ks.kind} is {out.strip()} in C, {kind} here"


@pytest.mark.parametrize(("header", "struct", "field", "size"), [
    ("tls.h", "ssl_data_event_t", "data", TLS_CHUNK_SIZE),
    ("packets.h", "packet_chunk_event_t", "data", PACKET_CHUNK_SIZE),
    ("bash.h", "bash_readline_event_t", "line", BASH_LINE_MAX),
])
def test_tail_sizes_match_headers(tmp_path: Path, header: str, struct: str, field: str,
                                  size: int) -> None:
    c = c_layout(tmp_path, header, struct, [field])
    assert c[f"{field}.size"] == size

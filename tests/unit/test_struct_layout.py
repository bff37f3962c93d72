"""C layout parity: every construct declaration against the C compiler's offsetof/sizeof.

The kern/ headers are compiled by the host C compiler into a tiny program that prints each
field's offset and size, so a field added, removed or reordered on either side fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.structs import bash as bash_structs
from ecapture.structs import layout
from ecapture.structs import openssl as openssl_structs

KERN = Path(__file__).resolve().parents[2] / "kern"

# (header, C struct name, construct declaration)
CASES = [
    *(("openssl.h", name, decl) for name, decl in openssl_structs.STRUCTS.items()),
    *(("bash.h", name, decl) for name, decl in bash_structs.STRUCTS.items()),
]


def c_layout(tmp_path: Path, header: str, struct: str, fields: list[str]) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler: install gcc (the layout test is not optional)")
    lines = [f'#include "{header}"', "#include <stdio.h>", "#include <stddef.h>",
             "int main(void) {",
             f'  printf("sizeof %zu\\n", sizeof(struct {struct}));']
    for f in fields:
        lines.append(f'  printf("{f} %zu %zu\\n", offsetof(struct {struct}, {f}), '
                     f"sizeof(((struct {struct} *)0)->{f}));")
    lines += ["  return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", str(KERN), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    result: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "sizeof":
            result["sizeof"] = int(parts[1])
        else:
            result[parts[0]] = int(parts[1])
            result[parts[0] + ".size"] = int(parts[2])
    return result


@pytest.mark.parametrize(("header", "struct", "decl"), CASES, ids=[c[1] for c in CASES])
def test_layout_matches_c(tmp_path: Path, header: str, struct: str, decl: object) -> None:
    fields = layout(decl)  # type: ignore[arg-type]
    c = c_layout(tmp_path, header, struct, [f.name for f in fields])
    for f in fields:
        assert c[f.name] == f.offset, f"{struct}.{f.name}: C offset {c[f.name]}, ours {f.offset}"
        if f.size is not None:
            assert c[f.name + ".size"] == f.size, f"{struct}.{f.name}: size differs"
    last = fields[-1]
    if last.size is None:
        # Variable-length tail: the C array is the maximum, sent only up to data_len.
        assert c["sizeof"] == last.offset + c[last.name + ".size"]
    else:
        assert c["sizeof"] == last.offset + last.size, f"{struct}: sizeof differs (padding?)"


def test_chunk_size_matches_header(tmp_path: Path) -> None:
    c = c_layout(tmp_path, "openssl.h", "ssl_data_event_t", ["data"])
    assert c["data.size"] == openssl_structs.SSL_CHUNK_SIZE


def test_bash_line_max_matches_header(tmp_path: Path) -> None:
    c = c_layout(tmp_path, "bash.h", "bash_readline_event_t", ["line"])
    assert c["line.size"] == bash_structs.BASH_LINE_MAX


def test_event_kinds_match_header(tmp_path: Path) -> None:
    """The kind every event starts with: kern/ecapture.h's enum against the Python constants
    of every struct module, so a renumbering on one side fails here, not as decode errors."""
    from ecapture.structs import openssl as o

    kinds = {"ECAP_EVENT_SSL_DATA": o.EVENT_SSL_DATA, "ECAP_EVENT_CONN": o.EVENT_CONN,
             "ECAP_EVENT_MASTER_SECRET": o.EVENT_MASTER_SECRET,
             "ECAP_EVENT_PACKET": o.EVENT_PACKET,
             "ECAP_EVENT_BASH_READLINE": bash_structs.EVENT_BASH_READLINE}
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None
    src = tmp_path / "kinds.c"
    src.write_text('#include "ecapture.h"\n#include <stdio.h>\nint main(void) {\n'
                   + "".join(f'  printf("{k} %d\\n", (int){k});\n' for k in kinds)
                   + "  return 0;\n}\n")
    subprocess.run([cc, "-I", str(KERN), "-o", str(tmp_path / "kinds"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "kinds")], check=True, capture_output=True,
                         text=True).stdout
    assert dict(line.split() for line in out.splitlines()) == {k: str(v) for k, v in kinds.items()}

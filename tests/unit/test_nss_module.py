"""The nss module: its kernel filter's assumptions against the real NSPR and NSS (compiled
and run here), its function numbering against kern/nss.c, version detection, and the
refusal of the key models."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.errors import AttachError, ConfigError
from ecapture.modules import get
from ecapture.modules.nss import FUNCS, NO_KEYS, NSSModule
from ecapture.targets import find_library

KERN = Path(__file__).resolve().parents[2] / "kern" / "nss.c"
NSPR_INCLUDE, NSS_INCLUDE = Path("/usr/include/nspr"), Path("/usr/include/nss")

# Prints what kern/nss.c assumes of NSPR's ABI, and the descriptor type of each kind of
# descriptor a program may hand PR_Write: only SSL's may be PR_DESC_LAYERED.
ABI_PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include <prio.h>
#include <nss.h>
#include <ssl.h>

int main(int argc, char **argv) {
    printf("methods_offset %zu\n", offsetof(PRFileDesc, methods));
    printf("file_type_offset %zu\n", offsetof(PRIOMethods, file_type));
    printf("file_type_size %zu\n", sizeof(PRDescType));
    printf("iovec_size %zu\n", sizeof(PRIOVec));
    printf("iov_base_offset %zu\n", offsetof(PRIOVec, iov_base));
    printf("iov_len_offset %zu\n", offsetof(PRIOVec, iov_len));
    printf("NSPR_DESC_LAYERED %d\n", PR_DESC_LAYERED);
    printf("NSPR_MSG_PEEK %d\n", PR_MSG_PEEK);
    printf("NSPR_MAX_IOVECTOR_SIZE %d\n", PR_MAX_IOVECTOR_SIZE);
    if (NSS_NoDB_Init(NULL) != SECSuccess)
        return 1;
    PRFileDesc *file = PR_Open(argv[1], PR_WRONLY | PR_CREATE_FILE, 0600);
    PRFileDesc *pipes[2];
    if (!file || PR_CreatePipe(&pipes[0], &pipes[1]) != PR_SUCCESS)
        return 1;
    PRFileDesc *tcp = PR_NewTCPSocket(), *udp = PR_NewUDPSocket();
    PRFileDesc *ssl = SSL_ImportFD(NULL, PR_NewTCPSocket());
    if (!tcp || !udp || !ssl)
        return 1;
    printf("file %d\npipe %d\ntcp %d\nudp %d\nstdout %d\nssl %d\n",
           file->methods->file_type, pipes[1]->methods->file_type, tcp->methods->file_type,
           udp->methods->file_type, PR_GetSpecialFD(PR_StandardOutput)->methods->file_type,
           ssl->methods->file_type);
    return 0;
}
"""


def kern_defines() -> dict[str, int]:
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(
        r"^#define (NSPR_\w+) (0x[0-9a-f]+|\d+)", KERN.read_text(), re.M)}


@pytest.fixture(scope="module")
def nspr_abi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not (NSPR_INCLUDE / "prio.h").exists() or not (NSS_INCLUDE / "ssl.h").exists():
        pytest.skip("needs a C compiler and NSPR's and NSS's headers (libnss3-dev)")
    d = tmp_path_factory.mktemp("nspr_abi")
    (d / "abi.c").write_text(ABI_PROBE)
    subprocess.run([cc, "-o", str(d / "abi"), str(d / "abi.c"), f"-I{NSPR_INCLUDE}",
                    f"-I{NSS_INCLUDE}", "-lssl3", "-lnss3", "-lnspr4"], check=True,
                   capture_output=True)
    out = subprocess.run([str(d / "abi"), str(d / "plain.txt")], check=True,
                         capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_kernel_constants_are_nsprs(nspr_abi: dict[str, int]) -> None:
    """kern/nss.c reads PRFileDesc.methods and PRIOMethods.file_type at offset 0, a 4-byte
    enum, and PRIOVec as {8-byte pointer, int at 8} in 16 bytes; its constants are
    prio.h's."""
    assert (nspr_abi["methods_offset"], nspr_abi["file_type_offset"],
            nspr_abi["file_type_size"]) == (0, 0, 4)
    assert (nspr_abi["iovec_size"], nspr_abi["iov_base_offset"],
            nspr_abi["iov_len_offset"]) == (16, 0, 8)
    defines = kern_defines()
    for name in ("NSPR_DESC_LAYERED", "NSPR_MSG_PEEK", "NSPR_MAX_IOVECTOR_SIZE"):
        assert defines[name] == nspr_abi[name], name


def test_only_ssl_sockets_pass_the_kernel_filter(nspr_abi: dict[str, int]) -> None:
    """The filter keeps descriptors of type PR_DESC_LAYERED: an SSL socket is one; a file,
    a pipe, stdout and plain TCP and UDP sockets are not."""
    layered = kern_defines()["NSPR_DESC_LAYERED"]
    assert nspr_abi["ssl"] == layered
    for plain in ("file", "pipe", "stdout", "tcp", "udp"):
        assert nspr_abi[plain] != layered, plain


def test_function_names_follow_the_kernel_enum() -> None:
    enum = re.search(r"enum nss_func \{(.*?)\};", KERN.read_text(), re.S)
    assert enum is not None
    numbered = {int(n): name for name, n in re.findall(r"NSS_FUNC_(\w+) = (\d+)", enum[1])}
    assert numbered == {n: name.upper() for n, name in FUNCS.items()}
    # And each named function has its probe.
    text = KERN.read_text()
    for name in FUNCS.values():
        assert f"int uprobe_{name}(" in text


def test_key_models_are_refused() -> None:
    # The command line's refusal, with this reason, is test_cli's (every module, every model).
    assert get("nspr") is NSSModule
    assert "keylog" not in NSSModule.models and "pcap" not in NSSModule.models
    assert NSSModule.no_model_reason == NO_KEYS
    with pytest.raises(ConfigError, match="PKCS#11") as refused:
        NSSModule({}).require_keys()
    assert str(refused.value) == NO_KEYS and "\n" not in NO_KEYS


def test_version_from_the_nss_banner(tmp_path: Path) -> None:
    nspr, ssl3 = tmp_path / "libnspr4.so", tmp_path / "libssl3.so"
    nspr.write_bytes(b"\x00shma\x004.35\x00NSPR_INHERIT_FDS\x00")  # NSPR's: not NSS's
    assert NSSModule._detect_version(str(nspr), None) is None
    ssl3.write_bytes(b"\x00" * 5000 + b"\x003.87.1\x00Version: NSS 3.87.1\x00")
    assert NSSModule._detect_version(str(nspr), str(ssl3)) == "3.87.1"
    # Without libssl3, libnss3 beside libnspr4 tells it.
    (tmp_path / "libnss3.so").write_bytes(b"Version: NSS 3.101\x00")
    assert NSSModule._detect_version(str(nspr), None) == "3.101"


def test_bad_library_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        NSSModule({"nspr": str(tmp_path / "missing.so")}).check()
    junk = tmp_path / "libnspr4.so"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(AttachError) as exc:
        NSSModule({"nspr": str(junk)}).init()
    assert "\n" not in str(exc.value)


def test_system_nss_is_found_with_its_version() -> None:
    if find_library([r"libnspr4\.so"]) is None:
        pytest.skip("NSPR is not installed")
    module = NSSModule({})
    module.init()
    assert module.libnspr is not None and module.libnspr.endswith("libnspr4.so")
    assert module.libssl3 is not None and module.libssl3.endswith("libssl3.so")
    assert module.version is not None and re.fullmatch(r"3\.\d+(\.\d+)*", module.version)
    assert [t.path for t in module.targets] == [module.libnspr, module.libssl3]
    symbols = {p.target for p in module.library_probes()}
    assert symbols == {"PR_Read", "PR_Write", "PR_Recv", "PR_Send", "PR_Writev",
                       "SSL_ForceHandshake"}

"""The gotls module's own rules: a writeKeyLog event becomes the line Go would write, and
never a cut or unread one; the offsets table is data that maps every release it lists and
no other; a program the module cannot read is refused in one line."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from ecapture.errors import AttachError, ConfigError
from ecapture.events import KeyLogEntry
from ecapture.modules import gotls
from ecapture.modules.gotls import READ, WRITE, WRITE_KEY_LOG, GoTLSModule
from ecapture.modules.gotls_offsets import FIRST, LAST, LAYOUTS, GoOffsets, go_offsets
from ecapture.structs.gotls import (
    EVENT_GOTLS_KEYLOG,
    UNREAD_LABEL,
    UNREAD_RANDOM,
    UNREAD_SECRET,
    go_keylog_event_t,
)
from ecapture.testing.factories import make_event
from ecapture.testing.gobuild import Variant, build, toolchain

CONFIG = {"elfpath": None, "pid": None, "uid": None, "ifname": None}
RANDOM = bytes(range(1, 33))
SECRET = bytes(range(100, 148))
PROGRAM = Path(__file__).resolve().parents[1] / "integration" / "programs" / "gotls"


def keylog_event(label: bytes, random: bytes = RANDOM, secret: bytes = SECRET,
                 lengths: tuple[int, int, int] | None = None, unread: int = 0,
                 pid: int = 7, label_ptr: int = 0x4d2000) -> bytes:
    n = lengths or (len(label), len(random), len(secret))
    return make_event(go_keylog_event_t, kind=EVENT_GOTLS_KEYLOG, pid=pid, tid=8, uid=9,
                      label_len=n[0], client_random_len=n[1], secret_len=n[2], unread=unread,
                      label_ptr=label_ptr, label=label.ljust(32, b"\0")[:32],
                      client_random=random.ljust(32, b"\0"), secret=secret.ljust(64, b"\0"),
                      comm=b"client")


def entries(label: bytes, random: bytes = RANDOM, secret: bytes = SECRET,
            lengths: tuple[int, int, int] | None = None, unread: int = 0,
            module: GoTLSModule | None = None) -> list[KeyLogEntry]:
    module = module or GoTLSModule(CONFIG)
    data = keylog_event(label, random, secret, lengths, unread)
    return [e for e in module.dispatch(module.decode("events", data))
            if isinstance(e, KeyLogEntry)]


@pytest.mark.parametrize("label", [b"CLIENT_RANDOM", b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                                   b"SERVER_TRAFFIC_SECRET_0"])
@pytest.mark.parametrize("n", [32, 48])
def test_a_key_log_call_is_its_line(label: bytes, n: int) -> None:
    (entry,) = entries(label, secret=SECRET[:n])
    assert entry.line == f"{label.decode()} {RANDOM.hex()} {SECRET[:n].hex()}"
    assert (entry.pid, entry.tid, entry.uid, entry.comm) == (7, 8, 9, "client")


@pytest.mark.parametrize("lengths", [(13, 32, 65), (33, 32, 48), (13, 33, 48), (0, 32, 48),
                                     (13, 32, 0)])
def test_a_cut_field_gives_no_line(lengths: tuple[int, int, int]) -> None:
    assert entries(b"CLIENT_RANDOM", lengths=lengths) == []


def test_an_unread_secret_gives_no_line() -> None:
    assert entries(b"CLIENT_RANDOM", secret=bytes(48)) == []
    assert entries(b"CLIENT_RANDOM", random=bytes(32)) == []
    assert entries(b"CLIENT_RANDOM", unread=UNREAD_SECRET) == []
    assert entries(b"CLIENT_RANDOM", unread=UNREAD_RANDOM) == []


def test_an_unread_label_comes_from_the_recorded_fact() -> None:
    # The kernel could not read the label (a page of read-only data not yet touched):
    # zeros, and no line, until the fact observe() recorded says what is at its address.
    assert entries(bytes(31), lengths=(31, 32, 48), unread=UNREAD_LABEL) == []
    module = GoTLSModule(CONFIG)
    assert list(module.apply("go_label", {"pid": 7, "address": 0x4d2000,
                                          "label": "SERVER_HANDSHAKE_TRAFFIC_SECRET"})) == []
    (entry,) = entries(bytes(31), lengths=(31, 32, 48), unread=UNREAD_LABEL, module=module)
    assert entry.line == f"SERVER_HANDSHAKE_TRAFFIC_SECRET {RANDOM.hex()} {SECRET.hex()}"


def test_observe_reads_an_unread_label_from_the_process_once() -> None:
    label = ctypes.create_string_buffer(b"CLIENT_TRAFFIC_SECRET_0", 23)
    address = ctypes.addressof(label)
    module = GoTLSModule(CONFIG)
    data = keylog_event(bytes(23), lengths=(23, 32, 48), unread=UNREAD_LABEL,
                        pid=os.getpid(), label_ptr=address)
    facts = module.observe(data, lambda pid, fd: None)
    assert facts == [("go_label", {"pid": os.getpid(), "address": address,
                                   "label": "CLIENT_TRAFFIC_SECRET_0"})]
    assert module.observe(data, lambda pid, fd: None) == []  # once per address
    # Read but not a label (or unreadable): no fact, and no line later.
    junk = ctypes.create_string_buffer(b"not a label at all", 18)
    other = keylog_event(bytes(18), lengths=(18, 32, 48), unread=UNREAD_LABEL,
                         pid=os.getpid(), label_ptr=ctypes.addressof(junk))
    assert module.observe(other, lambda pid, fd: None) == []
    gone = keylog_event(bytes(13), lengths=(13, 32, 48), unread=UNREAD_LABEL, pid=2**22 + 7)
    assert module.observe(gone, lambda pid, fd: None) == []


# -- the offsets table, as data -----------------------------------------------------------

def test_every_listed_release_maps_to_its_row() -> None:
    for first, last, offsets in LAYOUTS:
        for minor in range(first[1], last[1] + 1):
            assert go_offsets((1, minor)) is offsets
    assert go_offsets(FIRST) is not None and go_offsets(LAST) is not None


def test_releases_outside_the_table_are_unknown() -> None:
    assert go_offsets((FIRST[0], FIRST[1] - 1)) is None
    assert go_offsets((LAST[0], LAST[1] + 1)) is None
    assert go_offsets((2, 0)) is None


def test_the_rows_do_not_overlap() -> None:
    spans = sorted((first, last) for first, last, _ in LAYOUTS)
    for (_, last), (first, _) in zip(spans, spans[1:], strict=False):
        assert last < first


def test_cflags_name_every_offset() -> None:
    flags = GoOffsets(conn_data=8, netconn_fd=0, netfd_sysfd=16, conn_vers=72).cflags()
    assert flags == ["-DGO_CONN_DATA_OFFSET=8", "-DGO_NETCONN_FD_OFFSET=0",
                     "-DGO_NETFD_SYSFD_OFFSET=16", "-DGO_CONN_VERS_OFFSET=72"]


def test_the_version_moved_in_go_1_21() -> None:
    # Go 1.21 put the QUIC state before vers: what the live tests read from DWARF.
    old, new = go_offsets((1, 20)), go_offsets((1, 21))
    assert old is not None and new is not None
    assert (old.conn_vers, new.conn_vers) == (64, 72)
    assert go_offsets((1, 19)) is old and go_offsets((1, 27)) is new


# -- refusals ------------------------------------------------------------------------------

def test_no_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="-e/--elfpath BINARY, or --pid PID"):
        GoTLSModule(CONFIG).init()


def test_a_program_that_is_not_go_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a Go program"):
        GoTLSModule({**CONFIG, "elfpath": "/bin/true"}).init()


@pytest.fixture(scope="module")
def go_program() -> Path:
    if toolchain("1.19") is None:
        pytest.skip("Go 1.19 is not installed (scripts/setup.sh installs golang-go)")
    return build(PROGRAM, "1.19", Variant(stripped=True, pie=True))


def test_a_stripped_pie_program_gives_its_probes(go_program: Path) -> None:
    module = GoTLSModule({**CONFIG, "elfpath": str(go_program)})
    module.init()
    probes = module.library_probes()
    by_fn: dict[str, int] = {}
    for p in probes:
        assert p.kind == "uprobe" and p.address is not None  # never a uretprobe
        by_fn[p.fn] = by_fn.get(p.fn, 0) + 1
    assert by_fn["uprobe_go_read"] == by_fn["uprobe_go_write"] == 1
    assert by_fn["uprobe_go_write_key_log"] == 1
    assert module.read is not None and module.write is not None
    assert by_fn["uprobe_go_ret"] == len(module.read.rets) + len(module.write.rets) > 2
    assert {p.target for p in probes if p.fn != "uprobe_go_ret"} == {READ, WRITE, WRITE_KEY_LOG}
    assert module.targets[0].version == "Go 1.19" or \
        module.targets[0].version.startswith("Go 1.19.")  # type: ignore[union-attr]


def test_an_unknown_layout_is_refused_in_one_line(go_program: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gotls, "go_offsets", lambda minor: None)
    with pytest.raises(AttachError, match=r"built by go1\.19.*does not know \(it knows Go "
                                          rf"{FIRST[0]}\.{FIRST[1]} to"):
        GoTLSModule({**CONFIG, "elfpath": str(go_program)}).init()


def test_the_stack_abi_is_refused_in_one_line(go_program: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gotls, "register_abi", lambda binary: False)
    with pytest.raises(AttachError, match="pass arguments on the stack"):
        GoTLSModule({**CONFIG, "elfpath": str(go_program)}).init()

"""The kernel matrix's pure parts: resolving Debian kernel names, reading pytest's junit
XML, and the table. Booting is exercised by ``tox -e matrix`` itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecapture.testing.matrix import kernels, suite, table

NAMES = ["linux-headers-5.10.0-45-amd64", "linux-headers-5.10.0-46-amd64",
         "linux-headers-5.10.0-46-common", "linux-headers-6.1.0-9-amd64",
         "linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-cloud-amd64",
         "linux-headers-6.12.9+deb12-amd64", "linux-headers-6.12.118+deb13-amd64",
         "linux-headers-7.2.12+deb13-amd64", "linux-headers-7.3.4+deb13-amd64",
         "linux-headers-7.3.4+deb13-rt-amd64", "linux-headers-amd64"]


@pytest.mark.parametrize(("series", "version"), [
    ("5.10", "5.10.0-46"), ("6.1", "6.1.0-56"), ("6.12", "6.12.118+deb13"),
    ("7", "7.3.4+deb13"), ("7.2", "7.2.12+deb13"), ("4.19", None),
])
def test_newest_in_series(series: str, version: str | None) -> None:
    # Numeric order (56 > 9, 118 > 9), flavours other than plain amd64 ignored, and
    # "6.1" never picks a 6.12.
    assert kernels.newest_in_series(NAMES, series) == version


def test_depends_reads_apt_cache_output() -> None:
    text = ("linux-image-7.3.4+deb13-amd64\n  PreDepends: linux-base\n |Depends: dracut\n"
            "  Depends: <linux-initramfs-tool>\n  Depends: linux-binary-7.3.4+deb13-amd64\n"
            "  Depends: linux-modules-7.3.4+deb13-amd64\n  Recommends: firmware-linux-free\n")
    assert kernels.depends(text) == ["dracut", "linux-binary-7.3.4+deb13-amd64",
                                     "linux-modules-7.3.4+deb13-amd64"]


def test_guest_command(tmp_path: Path) -> None:
    from ecapture.testing.matrix import guest

    k = kernels.Kernel("6.1", "6.1.0-56-amd64", tmp_path / "vmlinuz", tmp_path)
    cmd = guest.vng_command(k, "uname -r", [tmp_path / "out"], cache=tmp_path)
    assert cmd[:3] == ["vng", "--run", str(tmp_path / "vmlinuz")]
    assert "--disable-kvm" in cmd and cmd[cmd.index("--cpus") + 1] == "1"
    assert cmd[cmd.index("--rwdir") + 1] == str(tmp_path / "out")
    assert cmd[-2:] == ["--exec", "uname -r"]


def test_guest_script_keeps_awkward_arguments_whole(tmp_path: Path) -> None:
    """Test ids and -k expressions carry brackets, parentheses and quotes: the guest runs
    a script, so its command line holds none of them, and sh reads them back whole."""
    import shlex
    import subprocess

    from ecapture.testing.matrix.__main__ import guest_script

    awkward = ["tests/t.py::test_x[1.3-auto]", "-k", "(a and b) or c's"]
    command = guest_script(tmp_path, ["printf", "%s\\n", *awkward])
    assert command == f"sh {shlex.quote(str(tmp_path / 'guest.sh'))}"
    assert not set("[]()'\"") & set(command.replace(str(tmp_path), ""))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == awkward


def test_parse_junit_of_a_real_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.ecapture_module("bash")

        def test_ok():
            pass

        def test_bad():
            assert 1 == 2, "one is not two"

        @pytest.mark.skip(reason="not on this kernel")
        def test_skipped():
            pass

        @pytest.mark.ecapture_module("tls")
        def test_other_module():
            pass
    """)
    junit = pytester.path / "junit.xml"
    pytester.runpytest(f"--junitxml={junit}")
    tests = {t["id"].rsplit("::", 1)[1]: t for t in suite.parse_junit(junit)}
    assert {n: (t["module"], t["outcome"]) for n, t in tests.items()} == {
        "test_ok": ("bash", "passed"), "test_bad": ("bash", "failed"),
        "test_skipped": ("bash", "skipped"), "test_other_module": ("tls", "passed")}
    assert "one is not two" in tests["test_bad"]["message"]
    assert tests["test_skipped"]["message"] == "not on this kernel"


def _result(label: str, outcomes: dict[str, list[str]], **extra: object) -> dict[str, object]:
    tests = [{"id": f"t::{m}_{i}", "module": m, "outcome": o, "message": f"why {i}"}
             for m, os_ in outcomes.items() for i, o in enumerate(os_)]
    return {"label": label, "features": {"ringbuf": True, "kprobes": False},
            "tests": tests, "seconds": 61.2, "pytest_rc": 0, **extra}


def test_table_rows_cells_and_paths(tmp_path: Path) -> None:
    sessions = [{"buffer": "ringbuf", "probes": ["uretprobe:readline"],
                 "probe_read_user": False},
                {"buffer": "perf", "probes": ["uprobe:SSL_read", "tracepoint:sock:x",
                                              "uretprobe:SSL_read"], "probe_read_user": True}]
    good = _result("6.1.0-56-amd64", {"tls": ["passed"] * 3, "bash": ["passed"]},
                   sessions=sessions)
    bad = _result("5.10.0-46-amd64", {"tls": ["passed", "failed"], "bash": ["skipped"]},
                  pytest_rc=1)
    dead = {"label": "7.3.4+deb13-amd64", "error": "guest did not boot", "tests": []}
    for r in (good, bad, dead):
        d = tmp_path / str(r["label"])
        d.mkdir()
        (d / "result.json").write_text(json.dumps(r))
    text = table.render(table.load(sorted(tmp_path.iterdir())))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "| pass 1 | pass 3 |" in rows["6.1.0-56-amd64"]
    assert "| ringbuf+perf | uretprobe, uprobe, tracepoint | user+combined |" \
        in rows["6.1.0-56-amd64"]
    assert "| skip: why 0 | FAIL 1/2: tls_1 |" in rows["5.10.0-46-amd64"]
    assert rows["5.10.0-46-amd64"].endswith("| FAIL |")
    assert rows["7.3.4+deb13-amd64"].endswith("| guest did not boot |")
    assert [table.status(r) for r in (good, bad, dead)] == ["pass", "FAIL", "ERROR"]

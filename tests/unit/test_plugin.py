"""The ecapture pytest plugin, run the way users get it: installed, in a fresh pytest
session (pytester), against our real fixture recordings."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ecapture.testing.plugin import kernel_satisfies, release_version

RECORDINGS = Path(__file__).resolve().parents[2] / "fixtures" / "recordings"


@pytest.mark.parametrize(("spec", "release", "ok"), [
    (">=5.8", "6.1.0-56-amd64", True),
    (">=5.8", "5.4.0-150-generic", False),
    (">=5.8,<7", "7.3.4+deb13-amd64", False),
    (">=5.8,<7", "6.12.118+deb13-amd64", True),
    ("==6.1", "6.1.0-56-amd64", True),
    (">6.1.0", "6.1.0-56-amd64", False),
    ("!=5.10", "5.10.0-46-amd64", False),
    ("<5", "4.19.0", True),
])
def test_kernel_requirement(spec: str, release: str, ok: bool) -> None:
    assert kernel_satisfies(spec, release) is ok


def test_bad_requirements_are_refused() -> None:
    with pytest.raises(ValueError, match="bad kernel requirement"):
        kernel_satisfies("~5.8", "6.1.0")
    with pytest.raises(ValueError, match="not a kernel release"):
        release_version("linux")


MARKED = """
import pytest

@pytest.mark.requires_kernel(">=999")
def test_future_kernel():
    pass

@pytest.mark.requires_lib("libdoes-not-exist.so.9")
def test_missing_lib():
    pass

@pytest.mark.requires_lib("libc.so.6")
@pytest.mark.requires_kernel(">=2.6")
def test_present():
    pass
"""


def test_markers_skip_with_reason(pytester: pytest.Pytester,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECAPTURE_REQUIRE_LIVE", raising=False)
    pytester.makepyfile(MARKED)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*needs kernel >=999, this is *",
                                 "*library not found: libdoes-not-exist.so.9*"])


def test_markers_fail_when_live_is_required(pytester: pytest.Pytester,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECAPTURE_REQUIRE_LIVE", "1")
    pytester.makepyfile(MARKED)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*ECAPTURE_REQUIRE_LIVE=1 but this test cannot run: needs "
                                 "kernel >=999*"])


def test_recording_and_golden_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"[pytest]\necapture_recordings = {RECORDINGS}\n")
    expected = pytester.path / "curl.expected.txt"
    pytester.makepyfile(f"""
        from ecapture.events import TlsData

        def test_replay(recording, golden):
            rec = recording("tls/curl_http11")
            data = [e for e in rec.events() if isinstance(e, TlsData)]
            assert data and data[0].data.startswith(b"GET / HTTP/1.1")
            golden.check(rec.text(), {str(expected)!r})

        def test_unknown(recording):
            recording("tls/nothing-here")
    """)
    # In subprocesses: inline runs re-import ecapture, and isinstance would compare classes
    # of two imports. No expected file yet: the golden check says how to make it.
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*curl.expected.txt is missing: run pytest --update-golden*",
                                 "*no recording 'tls/nothing-here' under*"])
    result = pytester.runpytest_subprocess("--update-golden", "-k", "replay")
    result.assert_outcomes(passed=1)
    assert expected.read_text() == (RECORDINGS / "tls/curl_http11.expected.txt").read_text()
    expected.write_text(expected.read_text().replace("GET", "PUT", 1))
    result = pytester.runpytest_subprocess("-k", "replay")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*output differs from curl.expected.txt*"])


def test_module_marker_reaches_junit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.ecapture_module("bash")
        def test_tagged():
            pass
    """)
    junit = pytester.path / "junit.xml"
    pytester.runpytest(f"--junitxml={junit}").assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert props == {"ecapture_module": "bash"}

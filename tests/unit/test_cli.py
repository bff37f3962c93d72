"""The command line offline: replay and info on good, damaged and foreign files, and the
one-line errors with non-zero exits that bad input must get."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ecapture import modules as registry
from ecapture.cli import DAMAGED, main
from ecapture.errors import ConfigError
from ecapture.outputs import MODELS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "recordings" / "tls" / "curl_http11.ecap"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ecapture", *args], capture_output=True,
                          text=True, cwd=ROOT, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})


def test_replay_without_file_plays_the_demo() -> None:
    out = run("replay")
    assert out.returncode == 0, out.stderr
    assert out.stdout == DEMO.with_suffix(".expected.txt").read_text()


def test_replay_pid_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(DEMO), "--pid", "1"]) == 0
    assert capsys.readouterr().out == ""


def test_not_a_recording_is_one_line_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ecap"
    junk.write_bytes(b"hello, I am not a recording\n" * 10)
    for cmd in ("replay", "info"):
        out = run(cmd, str(junk))
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "not an ecapture recording" in out.stderr
        assert "Traceback" not in out.stderr


def test_truncated_recording_replays_what_it_has(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    cut = tmp_path / "cut.ecap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = run("replay", "--raw", str(cut))
    assert out.returncode == DAMAGED
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"{cut} was not closed cleanly (the capture was killed or crashed): " in out.stderr
    assert "bytes were an incomplete record" in out.stderr
    full = run("replay", "--raw", str(DEMO)).stdout
    assert out.stdout and full.startswith(out.stdout)  # every complete record, nothing else
    parsed = run("replay", str(cut))
    assert parsed.returncode == DAMAGED and "> GET / HTTP/1.1" in parsed.stdout
    info = run("info", str(cut))
    assert info.returncode == DAMAGED
    assert "ending:         not closed cleanly: the capture was killed or crashed (" \
        in info.stdout


def test_info_of_a_clean_recording() -> None:
    out = run("info", str(DEMO))
    assert out.returncode == 0, out.stderr
    for word in ("kernel:", "tool:", "tls/events", "clean", "start:", "end:"):
        assert word in out.stdout


def test_unknown_module() -> None:
    with pytest.raises(ConfigError, match="unknown module 'nope'"):
        registry.get("nope")
    out = run("nope")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_registry_rejects_duplicate_names() -> None:
    with pytest.raises(RuntimeError, match="registered twice"):
        registry._index((*registry.MODULES, registry.MODULES[0]))


def test_alias_builds_the_same_subcommand() -> None:
    assert registry.get("openssl") is registry.get("tls")


@pytest.mark.parametrize("args", [("tls", "--pid", "abc"), ("tls", "--uid", "-1"),
                                  ("replay", "--pid", "x")])
def test_bad_option_is_a_usage_error(args: tuple[str, ...]) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "error: argument" in out.stderr


BASH = ROOT / "fixtures" / "recordings" / "bash" / "interactive.ecap"


@pytest.mark.parametrize("args", [("--pid", "1"), ("--comm", "nosuch"), ("--port", "443")])
def test_replay_filters_apply_to_every_module(args: tuple[str, ...],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The bash recording once printed all its lines whatever the filter said."""
    assert main(["replay", str(BASH), *args]) == 0
    assert capsys.readouterr().out == ""
    assert main(["replay", str(BASH), "--comm", "bash"]) == 0
    assert capsys.readouterr().out == BASH.with_suffix(".expected.txt").read_text()


def test_replay_stats_summarizes_on_stderr() -> None:
    out = run("replay", "--stats", str(DEMO))
    assert out.returncode == 0 and out.stdout == DEMO.with_suffix(".expected.txt").read_text()
    info = run("info", str(DEMO)).stdout
    total = int(info.split("events:")[1].split()[0])
    assert f"summary: {total:,} events" in out.stderr
    assert "tls/events:" in out.stderr and "0 lost" in out.stderr
    from ecapture.render import Style
    from ecapture.testing.replay import replay_events

    shown = sum(1 for e in replay_events(DEMO, parsed=True) if e.text(Style()))
    assert f"text: {shown:,} events shown" in out.stderr


@pytest.mark.parametrize("size", ["0", "3", "-8", "2048", "x"])
def test_mapsize_must_be_a_power_of_two(size: str) -> None:
    out = run("tls", "--mapsize", size)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "--mapsize" in out.stderr


@pytest.mark.parametrize(("module", "model"), [
    (m.name, model) for m in registry.MODULES for model in MODELS if model not in m.models])
def test_a_model_a_module_lacks_is_refused_with_its_reason(module: str, model: str) -> None:
    """Before root is needed: one line that names the model, the reason if the module
    gives one, and the models it has."""
    out = run(module, "-m", model)
    cls = registry.get(module)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"ecapture {module} has no {model} model" in out.stderr
    assert cls.no_model_reason in out.stderr
    assert f"(it has {', '.join(cls.models)})" in out.stderr

"""The kernel matrix's pure parts: resolving Debian kernel names, reading pytest's junit
XML, and the table. Booting is exercised by ``tox -e matrix`` itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ecapture.testing.matrix import kernel_log, kernels, suite, table

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


# The kernel log. Splat texts below follow the kernels' own formats: 5.10 (Debian 11) and
# 7.3 (Debian 13) where they differ.

def _log(*lines: str, start: float = 812.0) -> str:
    return "".join(f"[{start + i / 1000:12.6f}] {line}\n" for i, line in enumerate(lines))


TRACE = ("Call Trace:", " <TASK>", " dump_stack_lvl+0x5d/0x80", " bpf_prog_run+0x2a/0x40",
         " do_syscall_64+0x82/0x190", " entry_SYSCALL_64_after_hwframe+0x76/0x7e", " </TASK>")
CPU_510 = ("CPU: 0 PID: 812 Comm: python3 Not tainted 5.10.0-46-amd64 #1 Debian 5.10.237-1",
           "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3 04/01/2014")
CPU_73 = ("CPU: 0 UID: 0 PID: 812 Comm: python3 Not tainted 7.3.4+deb13-amd64 #1 "
          "PREEMPT(lazy)  Debian 7.3.4-1",
          "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3 04/01/2014")
REGS = ("RIP: 0010:bpf_ringbuf_submit+0x4d/0x60",
        "Code: 48 8b 47 10 48 8b 40 08 <0f> 0b c3 cc cc cc cc 66 0f 1f 44 00 00",
        "RSP: 0018:ffffb0c5c0127d28 EFLAGS: 00010246",
        "RAX: 0000000000000000 RBX: ffff9d0c41a3e000 RCX: 0000000000000000")

SPLATS = {
    "WARN 5.10": (["------------[ cut here ]------------",
                   "WARNING: CPU: 0 PID: 812 at kernel/bpf/ringbuf.c:412 "
                   "bpf_ringbuf_submit+0x4d/0x60",
                   "Modules linked in: nf_tables nfnetlink",
                   *CPU_510, *REGS, *TRACE, "---[ end trace 6c8ae3c5c0a1f2b1 ]---"],
                  {"WARN": 1}),
    "WARN 7.3": (["------------[ cut here ]------------",
                  "WARNING: kernel/bpf/ringbuf.c:412 at bpf_ringbuf_submit+0x4d/0x60, "
                  "CPU#0: python3/812", "Modules linked in: nf_tables nfnetlink",
                  *CPU_73, *REGS, *TRACE, "---[ end trace 0000000000000000 ]---"],
                 {"WARN": 1}),
    "KASAN": (["==================================================================",
               "BUG: KASAN: slab-out-of-bounds in bpf_skb_load_bytes+0x6e/0x90",
               "Read of size 8 at addr ffff888012345678 by task swapper/0/0", "", *CPU_510,
               *TRACE], {"KASAN": 1}),
    "NULL deref": (["BUG: kernel NULL pointer dereference, address: 0000000000000008",
                    "#PF: supervisor read access in kernel mode",
                    "#PF: error_code(0x0000) - not-present page", "PGD 0 P4D 0 ",
                    "Oops: 0000 [#1] SMP NOPTI", *CPU_510, *REGS, *TRACE],
                   {"BUG": 1, "Oops": 1}),
    "page fault": (["BUG: unable to handle page fault for address: ffffffffc0a12000",
                    "#PF: supervisor write access in kernel mode",
                    "Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI", *CPU_73, *TRACE],
                   {"BUG": 1, "Oops": 1}),
    "GPF 5.10": (["general protection fault, probably for non-canonical address "
                  "0xdead000000000122: 0000 [#1] SMP NOPTI", *CPU_510, *REGS, *TRACE],
                 {"Oops": 1}),
    "GPF 7.3": (["Oops: general protection fault, probably for non-canonical address "
                 "0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI", *CPU_73, *TRACE],
                {"Oops": 1}),
    "kernel BUG at": (["------------[ cut here ]------------", "kernel BUG at mm/slub.c:321!",
                       "invalid opcode: 0000 [#1] SMP NOPTI", *CPU_510, *TRACE],
                      {"BUG": 1, "Oops": 1}),
    "panic": (["Kernel panic - not syncing: Fatal exception in interrupt",
               "Kernel Offset: 0x2a000000 from 0xffffffff81000000",
               "---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---"],
              {"panic": 1}),
    "RCU stall": (["rcu: INFO: rcu_sched self-detected stall on CPU",
                   "rcu: \t0-....: (5249 ticks this GP) idle=9fe/1/0x4000000000000002 "
                   "softirq=4213/4213 fqs=2620 ", "\t(t=5250 jiffies g=8009 q=131)",
                   "NMI backtrace for cpu 0", *CPU_510, *TRACE,
                   "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                   "rcu: \t1-...!: (0 ticks this GP) idle=4bc/0/0x0 softirq=0/0 fqs=0",
                   "NMI backtrace for cpu 1", *CPU_510, *TRACE],
                  {"RCU stall": 2}),
    "hung task": (["INFO: task kworker/u8:2:123 blocked for more than 122 seconds.",
                   "      Not tainted 7.3.4+deb13-amd64 #1 Debian 7.3.4-1",
                   '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
                   "task:kworker/u8:2    state:D stack:0     pid:123   tgid:123   ppid:2",
                   *TRACE, "INFO: task python3:812 blocked in I/O wait for more than 122 "
                   "seconds."], {"hung task": 2}),
    "soft lockup": (["watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [python3:812]",
                     "Modules linked in: nf_tables", *CPU_510, *REGS, *TRACE],
                    {"soft lockup": 1}),
    "hard lockup": (["watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 0"],
                    {"hard lockup": 1}),
    "UBSAN": (["================================================================"
               "================", "UBSAN: array-index-out-of-bounds in "
               "kernel/bpf/verifier.c:1234:5", "index 12 is out of range for type 'u32 [12]'",
               *CPU_73, *TRACE], {"UBSAN": 1}),
    "list corruption": (["list_add corruption. prev->next should be next (ffff9d0c41a3e0a8), "
                         "but was 0000000000000000. (prev=ffff9d0c41a3e000).",
                         "------------[ cut here ]------------",
                         "kernel BUG at lib/list_debug.c:28!",
                         "invalid opcode: 0000 [#1] SMP NOPTI", *CPU_510, *TRACE],
                        {"list corruption": 1, "BUG": 1, "Oops": 1}),
    "lockdep": (["======================================================",
                 "WARNING: possible circular locking dependency detected",
                 "5.10.0-46-amd64 #1 Not tainted",
                 "------------------------------------------------------",
                 "python3/812 is trying to acquire lock:", *CPU_510, *TRACE],
                {"lockdep": 1}),
    "kmemleak": (["kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)"],
                 {"kmemleak": 1}),
    "bare Call Trace": (["virtio_net virtio0: unexpected TX queue state, dumping stack",
                         *CPU_510, *TRACE], {"splat": 1}),
    "cut here, unknown header": (["------------[ cut here ]------------",
                                  "SOMETHING NEW: kernel/bpf/core.c:1 at x+0x1/0x2",
                                  "Modules linked in:", "", "", "", "", "",
                                  "more lines"], {"splat": 1}),
    "cut here, unknown header, trace": (["------------[ cut here ]------------",
                                         "SOMETHING NEW: kernel/bpf/core.c:1 at x+0x1/0x2",
                                         *CPU_73, *TRACE], {"splat": 1}),
    "SLUB": (["=========================================================================",
              "BUG kmalloc-128 (Tainted: G    B            ): Poison overwritten",
              "-------------------------------------------------------------------------",
              "INFO: 0xffff9d0c41a3e010-0xffff9d0c41a3e010 @offset=16. First byte 0x6a "
              "instead of 0x6b"], {"BUG": 1}),
}

# Lines of a clean run that look alarming and are not splats.
NOT_SPLATS = [
    # A deprecation notice: no trace, nothing broken.
    "WARNING: The mand mount option has been deprecated and",
    "         and is ignored by this kernel. Remove the mand",
    # Boot notes about CPU mitigations and settings.
    "Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks possible "
    "via Spectre v2 BHB attacks!",
    "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, "
    "data leaks possible!",
    "PCI: Using host bridge windows from ACPI; if necessary, use \"pci=nocrs\" and report a bug",
    # A Debian kernel booted by virtme-ng under qemu (its real log, these lines at <3>/<4>).
    "tsc: Unable to calibrate against PIT",
    "Invalid ELF header magic: != \\x7fELF",
    "virtme initramfs: initramfs does not have module crypto-x962(ecdsa-nist-p384)",
    "RAS: Correctable Errors collector initialized.",
    "clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable because "
    "the skew is too large:",
    # A user process crashing is not the kernel's fault.
    "python3[812]: segfault at 0 ip 00007f3a1c2b4d5e sp 00007ffd0f2c1a30 error 4 in "
    "libc.so.6[7f3a1c200000+155000] likely on CPU 0 (core 0, socket 0)",
    "traps: python3[812] general protection fault ip:7f3a1c2b4d5e sp:7ffd0f2c1a30 error:0 "
    "in libc.so.6[7f3a1c200000+155000]",
    "traps: python3[812] trap invalid opcode ip:55d0c0a1b2c3 sp:7ffd0f2c1a30 error:0",
    # What a BPF program's helpers make the kernel print.
    "python3[812] is installing a program with bpf_probe_write_user helper that may corrupt "
    "user memory!",
    "**********************************************************",
    "**   NOTICE NOTICE NOTICE NOTICE NOTICE NOTICE NOTICE   **",
    "** trace_printk() being used. Allocating extra memory.  **",
    "BPF: [123] STRUCT event size=32 vlen=4",
    "BPF: Invalid name",
    # bpf_trace_printk text quoted in a message, never at its start.
    "python3-812 [000] d..31 12.345678: bpf_trace_printk: WARNING: CPU: 0 PID: 1 at x",
    "audit: type=1334 audit(1796220479.520:12): prog-id=42 op=LOAD",
]


@pytest.mark.parametrize("name", list(SPLATS))
def test_scan_finds_each_kind_of_splat(name: str) -> None:
    lines, counts = SPLATS[name]
    found = kernel_log.scan(_log(*NOT_SPLATS[:3], *lines, *NOT_SPLATS[3:]))
    assert found.counts == counts
    # The first line of each kind is its header, without the timestamp.
    assert all(not line.startswith("[") and line.strip() for line in found.first.values())


def test_scan_names_the_header_line() -> None:
    found = kernel_log.scan(_log(*SPLATS["WARN 5.10"][0], *SPLATS["RCU stall"][0],
                                 *SPLATS["WARN 7.3"][0]))
    assert found.counts == {"WARN": 2, "RCU stall": 2}
    assert found.first == {
        "WARN": "WARNING: CPU: 0 PID: 812 at kernel/bpf/ringbuf.c:412 "
                "bpf_ringbuf_submit+0x4d/0x60",
        "RCU stall": "rcu: INFO: rcu_sched self-detected stall on CPU"}
    assert found.splats[0].lineno == 2
    # A bare trace shows what was printed before it, not "Call Trace:".
    bare = kernel_log.scan(_log(*SPLATS["bare Call Trace"][0]))
    assert bare.first == {"splat": "virtio_net virtio0: unexpected TX queue state, dumping stack"}


def test_scan_ignores_ordinary_lines() -> None:
    assert kernel_log.scan(_log(*NOT_SPLATS)).splats == ()
    assert kernel_log.describe(kernel_log.scan(_log(*NOT_SPLATS)).counts) == "clean"


def test_scan_skips_what_userspace_wrote_to_kmsg() -> None:
    """In raw form the kernel's own records carry facility 0; anything written to
    /dev/kmsg gets a facility above it, whatever prefix the writer chose."""
    warn = "WARNING: CPU: 0 PID: 1 at kernel/fake.c:1 fake+0x0/0x1"
    assert kernel_log.scan(f"<12>[   12.000000] {warn}\n<14>[   12.1] {TRACE[0]}\n").splats == ()
    found = kernel_log.scan(f"<4>[   12.000000] {warn}\n")
    assert found.counts == {"WARN": 1} and found.first == {"WARN": warn}


def test_describe_counts() -> None:
    assert kernel_log.describe({"WARN": 2, "RCU stall": 1}) == "WARN 2, RCU stall 1"


def test_kmsg_records_parse_and_format() -> None:
    record = "4,1234,812345678,-;WARNING: CPU: 0 PID: 1 at x\n SUBSYSTEM=cpu\n DEVICE=+cpu:0\n"
    pri, seq, usec, msg = kernel_log.parse_record(record)
    assert (pri, seq, usec, msg) == (4, 1234, 812345678, "WARNING: CPU: 0 PID: 1 at x")
    assert kernel_log.format_record(pri, usec, msg) == \
        "<4>[  812.345678] WARNING: CPU: 0 PID: 1 at x"


@pytest.mark.skipif(not os.access(kernel_log.KMSG, os.R_OK | os.W_OK),
                    reason="needs read and write access to /dev/kmsg (root)")
def test_read_since_a_mark_gets_only_the_new_records() -> None:
    start = kernel_log.mark()
    with open(kernel_log.KMSG, "w") as kmsg:
        kmsg.write("<4>ecapture unit test: WARNING: CPU: 0 PID: 1 at written-by-userspace\n")
    text, lost = kernel_log.read_since(start)
    assert lost == 0
    assert text.endswith("ecapture unit test: WARNING: CPU: 0 PID: 1 at written-by-userspace\n")
    assert len(text.splitlines()) < 10  # not the log from boot
    assert kernel_log.scan(text).splats == ()  # facility 1: userspace wrote it


def test_a_splat_in_the_kernel_log_fails_the_row(tmp_path: Path) -> None:
    """A run whose tests all passed is still a FAIL when its kernel logged a splat; the
    cell counts the splats and the first line of each is printed under the table."""
    recorded = _log(*NOT_SPLATS, *SPLATS["WARN 5.10"][0], *SPLATS["RCU stall"][0])
    log = suite.collect_kernel_log(tmp_path, -1, "boot", read=lambda after: (recorded, 0))
    assert (tmp_path / "kernel.log").read_text() == recorded
    hurt = _result("5.10.0-46-amd64", {"bash": ["passed"]}, kernel_log=log)
    clean_log = suite.collect_kernel_log(tmp_path, 12, "start",
                                         read=lambda after: (_log(*NOT_SPLATS), 3))
    clean = _result("6.1.0-56-amd64", {"bash": ["passed"]}, kernel_log=clean_log)
    unread = _result("6.12.118+deb13-amd64", {"bash": ["passed"]},
                     kernel_log=suite.collect_kernel_log(tmp_path, "no /dev/kmsg", "start"))
    old = _result("7.3.4+deb13-amd64", {"bash": ["passed"]})
    assert [table.status(r) for r in (hurt, clean, unread, old)] == \
        ["FAIL", "pass", "pass", "pass"]
    text = table.render([hurt, clean, unread, old])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert text.splitlines()[0].endswith("| bash | kernel log | time | result |")
    assert rows["5.10.0-46-amd64"].endswith("| pass 1 | WARN 1, RCU stall 2 | 61 s | FAIL |")
    assert rows["6.1.0-56-amd64"].endswith("| clean (3 records lost) | 61 s | pass |")
    assert "| unread: no /dev/kmsg |" in rows["6.12.118+deb13-amd64"]
    assert rows["7.3.4+deb13-amd64"].endswith("| pass 1 | - | 61 s | pass |")
    assert "- 5.10.0-46-amd64: WARN 1, first: `WARNING: CPU: 0 PID: 812 at " \
           "kernel/bpf/ringbuf.c:412 bpf_ringbuf_submit+0x4d/0x60`" in text
    assert "- 5.10.0-46-amd64: RCU stall 2, first: `rcu: INFO: rcu_sched self-detected " \
           "stall on CPU`" in text


def test_matrix_exit_status_fails_on_a_splat(tmp_path: Path) -> None:
    from ecapture.testing.matrix.__main__ import main

    log = {"file": "kernel.log", "since": "boot", "lost": 0,
           **kernel_log.scan(_log(*SPLATS["hung task"][0])).to_json()}
    for label, extra in (("6.1.0-56-amd64", {}), ("5.10.0-46-amd64", {"kernel_log": log})):
        d = tmp_path / "results" / label
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(_result(label, {"bash": ["passed"]},
                                                          **extra)))
    assert main(["table", str(tmp_path / "results"), "--out", str(tmp_path)]) == 1
    table_md = (tmp_path / "table.md").read_text()
    assert "| hung task 2 |" in table_md
    assert "first: `INFO: task kworker/u8:2:123 blocked for more than 122 seconds.`" in table_md


def test_a_guest_that_died_is_scanned_from_its_console(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No result.json came back: the oops that killed the guest is in its console log
    (an oops raises the console's log level), and the row says so."""
    import argparse

    from ecapture.testing.matrix import __main__ as matrix
    from ecapture.testing.matrix import guest

    def died(k: object, command: str, rwdirs: object, log: Path, **kw: object) -> int:
        log.write_text("$ vng --run vmlinuz --exec 'sh guest.sh'  # attempt 1\n" + _log(
            *SPLATS["NULL deref"][0], "Kernel panic - not syncing: Fatal exception"))
        return guest.GUEST_FAILED

    monkeypatch.setattr(guest, "run", died)
    k = kernels.Kernel("6.1", "6.1.0-56-amd64", tmp_path / "vmlinuz", tmp_path)
    args = argparse.Namespace(suite=None, pytest_args=[], timeout=60)
    result = json.loads((matrix._guest_row(k, tmp_path, args) / "result.json").read_text())
    assert result["kernel_log"]["counts"] == {"BUG": 1, "Oops": 1, "panic": 1}
    row = table.render([result]).splitlines()[2]
    assert "| BUG 1, Oops 1, panic 1 |" in row and "guest did not boot" in row

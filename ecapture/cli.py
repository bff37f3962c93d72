"""Command line: one subcommand per capture module (from the registry), plus replay and info.

This is the only module that prints. Errors from the EcaptureError hierarchy become one
line on stderr and a non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ecapture import __version__
from ecapture import modules as registry
from ecapture.errors import ConfigError, EcaptureError
from ecapture.filters import EventFilter, parse_when
from ecapture.modules.base import Module
from ecapture.outputs import MODELS, Output, make_output
from ecapture.pipeline import Binding, Pipeline, bind, bind_from_metadata, reorder_window
from ecapture.sources import CaptureStats, RecordingSource, human_bytes, run, summary_lines
from ecapture.streams import Conversations

# Exit status of replay and info: the recording was not closed cleanly (the capture was
# killed or crashed, whether or not a record was cut) or had damaged records. Everything
# readable was still shown; the status is for scripts, the line on stderr for people.
DAMAGED = 3
EXIT_STATUS = (f"exit status: 0 if the recording was closed cleanly; {DAMAGED} if it was not "
               "(the capture was killed or crashed) or has damaged records, after showing all "
               "it holds and saying so on stderr; 1 if it cannot be read at all; 2 for a "
               "usage error")
DEMO = "tls/curl_http11.ecap"
STATUS_EVERY_S = 0.5


def default_recording() -> Path:
    """The demo recording: shipped in the package, or in the source tree's fixtures."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / "demo.ecap",
                      here.parent / "fixtures" / "recordings" / DEMO):
        if candidate.exists():
            return candidate
    raise ConfigError("no recording given and the demo recording is not installed; "
                      "pass a FILE")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _mapsize(text: str) -> int:
    """Buffer sizes are whole pages in a power of two (the kernel's rule for ring and perf
    buffers), so MiB must be a power of two."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB: {text!r}") from None
    if not 1 <= value <= 1024 or value & (value - 1):
        raise argparse.ArgumentTypeError("must be a power of two from 1 to 1024 (MiB)")
    return value


def _add_output_options(p: argparse.ArgumentParser, models: Sequence[str],
                        keylog_default: str | None) -> None:
    # Every model is a choice, so that asking a module for one it lacks gets its reason in
    # one line (_run_live) rather than argparse's list.
    p.add_argument("-m", "--model", choices=MODELS, default="text",
                   metavar="{" + ",".join(models) + "}",
                   help="text: blocks for people; json: one object per line (docs/json.md)"
                        + ("; keylog: TLS secrets as SSLKEYLOGFILE lines into --keylogfile; "
                           "pcap: packets and secrets into --pcapfile" if "keylog" in models
                           else ""))
    if "keylog" in models:
        shown = keylog_default or "ecapture_<module>_key.log"
        p.add_argument("-k", "--keylogfile", metavar="FILE", default=keylog_default,
                       help=f"where -m keylog writes (default: {shown})")
    if "pcap" in models:
        p.add_argument("-w", "--pcapfile", metavar="FILE", default="save.pcapng",
                       help="where -m pcap writes packets and TLS secrets "
                            "(default: save.pcapng)")
        p.add_argument("filter", nargs="*", metavar="FILTER",
                       help="-m pcap: keep only packets matching this tcpdump expression "
                            "(full tcpdump syntax, applied in the kernel), e.g. 'tcp port 443'")
    p.add_argument("--hex", action="store_true", help="show payloads as hex dumps")
    p.add_argument("--raw", action="store_true",
                   help="one block per TLS read/write, without parsing HTTP")


def make_pipeline(args: argparse.Namespace, bindings: list[Binding], metadata: dict[str, Any],
                  accept: Any = None, prefiltered: bool = False) -> tuple[Pipeline, Output]:
    """The same outputs and stages for live capture and replay."""
    ifname = getattr(args, "ifname", None) or next(
        (m.get("options", {}).get("ifname") for m in metadata.get("modules", [])), None)
    keylog = getattr(args, "keylogfile", None) or next(
        (b.module.keylog_default for b in bindings if b.module.keylog_default),
        "ecapture_key.log")
    output = make_output(args.model, sys.stdout, int(metadata.get("clock_offset_ns", 0)),
                         hex=args.hex, keylogfile=keylog,
                         pcapfile=getattr(args, "pcapfile", None) or "save.pcapng",
                         ifname=ifname,
                         pcap_filter=None if prefiltered else
                         " ".join(getattr(args, "filter", None) or []))
    conversations = None if args.raw else Conversations(reorder_window(metadata))
    return Pipeline(bindings, [output], accept=accept, conversations=conversations), output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecapture",
        description="Capture TLS plaintext with eBPF; record raw events and replay them.",
        epilog="examples:\n  sudo ecapture tls --record cap.ecap\n  ecapture replay cap.ecap"
               "\n  ecapture info cap.ecap",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ecapture {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for module in registry.MODULES:
        p = sub.add_parser(module.name, aliases=list(module.aliases), help=module.help,
                           description=module.help)
        for option in module.options:
            option.add_to(p)
        _add_output_options(p, module.models, module.keylog_default)
        p.add_argument("--record", metavar="FILE",
                       help="also record raw events to FILE (.ecap, created mode 0600)")
        p.add_argument("--duration", type=_positive, metavar="SECONDS",
                       help="stop after this many seconds (default: until Ctrl-C)")
        p.add_argument("--perf-buffer", action="store_true",
                       help="use perf buffers even where the kernel has ring buffers")
        p.add_argument("--mapsize", type=_mapsize, default=32, metavar="MiB",
                       help="size of each event buffer in MiB, a power of two (default: 32; "
                            "perf buffers: per CPU)")
        p.add_argument("--dump-ebpf", action="store_true",
                       help="print the eBPF source and compiler flags, then exit")
        p.set_defaults(run=_run_live, module_cls=module)

    p = sub.add_parser("replay", help="replay a recording through the same decoders and outputs",
                       description="Replay a recording offline: no root, no bcc needed. "
                                   "Without FILE, replays the shipped demo recording.",
                       epilog=EXIT_STATUS)
    p.add_argument("file", nargs="?", metavar="FILE")
    _add_output_options(p, MODELS, None)
    p.add_argument("-p", "--pid", type=int, help="only events of this process id")
    p.add_argument("--comm", help="only events of processes with this command name")
    p.add_argument("--port", type=int, help="only connections with this port at either end")
    p.add_argument("--host", help="only connections with this IP address at either end")
    p.add_argument("--mntns", type=int, metavar="INODE", help="only events of processes in "
                   "this mount namespace (a container; the number the events show, as lsns "
                   "does)")
    p.add_argument("--cgroup", metavar="PATH", help="only events of processes in this cgroup "
                   "or one below it (a container's, e.g. /system.slice/docker-ID.scope)")
    p.add_argument("--since", metavar="TIME", help="only events at or after this wall-clock "
                   "time (ISO 8601, e.g. 2026-11-24T15:55:23; naive means local time)")
    p.add_argument("--until", metavar="TIME", help="only events at or before this time")
    p.add_argument("--stats", action="store_true",
                   help="print a summary on stderr at the end: events, bytes and lost events "
                        "per map, what the model wrote")
    # A live capture's output: the replay of the recording it is writing (ecapture.live).
    for hidden in ("--follow-fd", "--notify-fd", "--summary-fd"):
        p.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    p.set_defaults(run=_run_replay)

    p = sub.add_parser("info", help="print a recording's metadata and counts",
                       epilog=EXIT_STATUS)
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=_run_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives positionals split by options (FILE -m pcap tcp port 443) to the first
    # positional only: the words left over are the rest of the packet filter.
    if extra:
        if not hasattr(args, "filter") or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.filter = [*args.filter, *extra]
    try:
        return int(args.run(args))
    except EcaptureError as e:
        print(f"ecapture: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # Output piped into head(1) and friends: not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


def _since_launch(fallback: float) -> float:
    """Seconds since this process was started (by the kernel's clock, so interpreter start
    and imports count too); ``time.monotonic() - fallback`` where /proc cannot tell."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime: field 22
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - fallback


def _say(text: str) -> None:
    print(f"ecapture: {text}", file=sys.stderr, flush=True)


def _summary(stats: CaptureStats, duration: float | None, output: Output,
             extra: Sequence[str] = ()) -> None:
    said = getattr(output, "summary", None)
    lines = summary_lines(stats, duration, [*extra, *([said()] if said else [])])
    _say("summary: " + "\n".join(lines))


# -- live ------------------------------------------------------------------------------

class _Status:
    """The status line on a terminal: events, bytes and lost events per map, the rate, and
    how far the output lags behind the capture. Shown when stderr is a terminal that the
    output is not also being printed on."""

    def __init__(self, stats: CaptureStats, stream: TextIO, enabled: bool):
        self.stats = stats
        self.stream = stream
        self.enabled = enabled
        self._last = time.monotonic()
        self._last_events = 0
        self._shown = False

    def update(self, lag_bytes: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < STATUS_EVERY_S:
            return
        events = self.stats.events
        rate = (events - self._last_events) / (now - self._last)
        self._last, self._last_events = now, events
        parts = [f"{self.stats.names.get(i, i)} {c.events:,} ev {human_bytes(c.bytes)} "
                 f"{c.lost:,} lost" for i, c in sorted(self.stats.maps.items()) if c.events
                 or c.lost] or ["waiting for events"]
        parts.append(f"{rate:,.0f} ev/s")
        if lag_bytes:
            parts.append(f"output {human_bytes(lag_bytes)} behind")
        self.stream.write("\r\x1b[K" + " | ".join(parts))
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _output_args(args: argparse.Namespace, kernel_filter: bool) -> list[str]:
    """The output options of a live command, for the replay that prints its output."""
    out = ["-m", args.model]
    if args.hex:
        out.append("--hex")
    if args.raw:
        out.append("--raw")
    if getattr(args, "keylogfile", None):
        out += ["-k", args.keylogfile]
    if getattr(args, "pcapfile", None):
        out += ["-w", args.pcapfile]
    words = getattr(args, "filter", None) or []
    if words and not kernel_filter:  # else the kernel already kept only matching packets
        out += ["--", *words]
    return out


def _run_live(args: argparse.Namespace) -> int:
    # Imported here so that replay and info never import the live layer.
    from ecapture.live.drain import Drain
    from ecapture.live.output import OutputProcess
    from ecapture.live.session import LiveSession
    from ecapture.metadata import build_metadata
    from ecapture.record.writer import Writer

    launched = time.monotonic()
    module_cls: type[Module] = args.module_cls
    if args.model not in module_cls.models:
        why = f": {module_cls.no_model_reason}" if module_cls.no_model_reason else ""
        raise ConfigError(f"ecapture {module_cls.name} has no {args.model} model{why} "
                          f"(it has {', '.join(module_cls.models)})")
    module = module_cls({**{o.dest: getattr(args, o.dest) for o in module_cls.options},
                         "capture_packets": args.model == "pcap",
                         "pcap_filter": " ".join(getattr(args, "filter", None) or [])})
    bindings = bind([module])
    pages = args.mapsize * 256
    session = LiveSession(module, bindings, force_perf=args.perf_buffer,
                          ringbuf_pages=pages, perf_pages=pages)
    if args.dump_ebpf:
        return _dump_ebpf(session)
    session.init()
    if args.model in ("keylog", "pcap"):
        module.require_keys()

    drain: Drain | None = None
    output: OutputProcess | None = None
    stops = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stops
        stops += 1
        if drain is None or stops > 2:
            raise KeyboardInterrupt
        if stops == 1:
            drain.stop()  # the capture ends; the output still prints what it holds
        elif output is not None:
            _say("stopping the output; the recording is complete")
            output.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stats: CaptureStats | None = None
    writer = None
    status = (0, "")
    try:
        session.start()
        meta = build_metadata([module], bindings,
                              extra={"live": session.describe(), "model": args.model})
        output = OutputProcess(args.record, _output_args(args, session.kernel_filter))
        writer = Writer(args.record or "(spool)", meta, fd=output.write_fd)
        output.start()
        stats = CaptureStats.for_metadata(meta)
        drain = Drain(session, writer, stats, output)
        drain.start()
        buffer = "ring buffer" if session.features.ringbuf else "perf buffer"
        # Copies in containers go by the name their processes know them by (the lines
        # after this one tell them apart); ours is the path held open.
        files = [t.seen_as or t.path for t in module.targets]
        where = files[0] if len(files) == 1 else f"{len(files)} files" if files else ""
        _say(f"{module.name}: {len(session.attached)} probes attached to {where or '-'} "
             f"({buffer}) in {_since_launch(launched):.1f} s; Ctrl-C to stop")
        for note in [*module.notes, *session.notes]:
            _say(note)
        on_terminal = sys.stdout.isatty() and args.model in ("text", "json")
        status_line = _Status(stats, sys.stderr, sys.stderr.isatty() and not on_terminal)
        deadline = time.monotonic() + args.duration if args.duration else None
        while drain.is_alive():
            drain.join(STATUS_EVERY_S / 2)
            if deadline is not None and time.monotonic() >= deadline:
                drain.stop()
            if not output.alive() and not drain.stopping:
                drain.stop()  # the output is gone (an error, or its reader closed the pipe)
            pos = output.position()
            status_line.update(None if pos is None else max(0, writer.size - pos))
        status_line.clear()
        status = output.finish()
    finally:
        if drain is not None:
            drain.stop()
            drain.join()
        session.close()
        if output is not None and output.alive():
            output.stop()
            output.finish()
        if writer is not None:
            writer.abort()  # no-op when the drain thread closed it cleanly
        for s, handler in old.items():
            signal.signal(s, handler)
    assert drain is not None and stats is not None and writer is not None
    duration = ((drain.ended_ns or drain.started_ns) - drain.started_ns) / 1e9
    extra = []
    if args.record:
        extra.append(f"recorded {sum(writer.events.values()):,} events, "
                     f"{sum(writer.lost.values()):,} lost and {writer.facts:,} facts to "
                     f"{args.record}")
    extra += status[1].splitlines()  # the output's lines: the modules' and its own
    _say("summary: " + "\n".join(summary_lines(stats, duration, extra)))
    if drain.error is not None:
        raise drain.error  # the recording holds everything drained before it
    return status[0]


def _dump_ebpf(session: Any) -> int:
    session.module.check()
    session.module.init()
    session.detect_features()
    session.programs = session.module.programs(session.features)
    print(session.dump(), end="")
    return 0


# -- offline -----------------------------------------------------------------------------

def _run_replay(args: argparse.Namespace) -> int:
    from ecapture.record.info import replay_notice
    from ecapture.record.reader import Reader

    if args.follow_fd is not None:
        return _run_output(args)
    path = Path(args.file) if args.file else default_recording()
    started = time.monotonic()
    with Reader(str(path)) as reader:
        meta = reader.metadata
        accept = EventFilter(
            pid=args.pid, comm=args.comm, port=args.port, host=args.host,
            mntns=args.mntns, cgroup=args.cgroup,
            since_ns=parse_when(args.since) if args.since else None,
            until_ns=parse_when(args.until) if args.until else None,
            clock_offset_ns=int(meta.get("clock_offset_ns", 0)))
        pipeline, output = make_pipeline(args, bind_from_metadata(meta), meta,
                                         accept if accept.active else None)
        source = RecordingSource(reader)
        run(source, pipeline)
        pipeline.close()
    if args.stats:
        _summary(source.stats, time.monotonic() - started, output, pipeline.summary())
    # Last, after everything readable was replayed: one line, whether a kill -9 fell
    # between two records or cut one, so that neither looks like a complete capture.
    notice = replay_notice(str(path), reader.status)
    if notice is None:
        return 0
    _say(notice)
    return DAMAGED


def _run_output(args: argparse.Namespace) -> int:
    """A live capture's output: the replay of the recording it writes, while it grows."""
    from ecapture.follow import GrowingFile
    from ecapture.record.reader import Reader

    # Ctrl-C stops the capture (our parent); this process prints what is left and ends
    # with the recording. The parent stops it with SIGTERM on a second Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Flushed whenever it has caught up: `ecapture tls | grep ...` or `> file` shows each
    # event as it comes, as a terminal does, not when a block has filled.
    growing = GrowingFile(args.follow_fd, args.notify_fd, caught_up=sys.stdout.flush)
    summary = ""
    try:
        with Reader(growing) as reader:  # type: ignore[arg-type]
            meta = reader.metadata
            pipeline, output = make_pipeline(args, bind_from_metadata(meta), meta)
            growing.idle = pipeline.tick
            run(RecordingSource(reader), pipeline)
            pipeline.close()
            said = getattr(output, "summary", None)
            summary = "\n".join([*pipeline.summary(), *([said()] if said else [])])
    finally:
        if args.summary_fd is not None:
            with os.fdopen(args.summary_fd, "w") as f:
                f.write(summary)
        growing.close()
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from ecapture.record.info import format_info, summarize

    info = summarize(args.file)
    print(format_info(info).rstrip("\n"))
    return DAMAGED if info.status.damaged else 0

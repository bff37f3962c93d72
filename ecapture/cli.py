"""Command line: one subcommand per capture module (from the registry), plus replay and info.

This is the only module that prints. Errors from the EcaptureError hierarchy become one
line on stderr and a non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecapture import __version__
from ecapture import modules as registry
from ecapture.errors import ConfigError, EcaptureError
from ecapture.filters import EventFilter, parse_when
from ecapture.modules.base import Module
from ecapture.outputs import make_output
from ecapture.pipeline import Pipeline, bind, bind_from_metadata, reorder_window
from ecapture.record import Lost, Record
from ecapture.streams import Conversations

MODELS = ("text", "json", "keylog", "pcap")
DAMAGED = 3  # exit status: the recording was truncated or had corrupt records
DEMO = "tls/curl_http11.ecap"


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


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", choices=MODELS, default="text",
                   help="text: blocks for people; json: one object per line (docs/json.md); "
                        "keylog: TLS secrets as SSLKEYLOGFILE lines into --keylogfile")
    p.add_argument("-k", "--keylogfile", metavar="FILE", default="ecapture_openssl_key.log",
                   help="where -m keylog writes (default: ecapture_openssl_key.log)")
    p.add_argument("-w", "--pcapfile", metavar="FILE", default="save.pcapng",
                   help="where -m pcap writes packets and TLS secrets (default: save.pcapng)")
    p.add_argument("filter", nargs="*", metavar="FILTER",
                   help="-m pcap: keep only packets matching this tcpdump-like expression, "
                        "e.g. 'tcp port 443'")
    p.add_argument("--hex", action="store_true", help="show payloads as hex dumps")
    p.add_argument("--raw", action="store_true",
                   help="one block per TLS read/write, without parsing HTTP")


def make_pipeline(args: argparse.Namespace, bindings: list[Any], metadata: dict[str, Any],
                  accept: Any = None) -> Pipeline:
    """The same outputs and stages for live capture and replay."""
    ifname = getattr(args, "ifname", None) or next(
        (m.get("options", {}).get("ifname") for m in metadata.get("modules", [])), None)
    output = make_output(args.model, sys.stdout, int(metadata.get("clock_offset_ns", 0)),
                         hex=args.hex, keylogfile=args.keylogfile, pcapfile=args.pcapfile,
                         ifname=ifname, pcap_filter=" ".join(args.filter))
    conversations = None if args.raw else Conversations(reorder_window(metadata))
    return Pipeline(bindings, [output], accept=accept, conversations=conversations)


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
        _add_output_options(p)
        p.add_argument("--record", metavar="FILE",
                       help="also record raw events to FILE (.ecap, created mode 0600)")
        p.add_argument("--duration", type=_positive, metavar="SECONDS",
                       help="stop after this many seconds (default: until Ctrl-C)")
        p.add_argument("--perf-buffer", action="store_true",
                       help="use perf buffers even where the kernel has ring buffers")
        p.add_argument("--mapsize", type=int, default=8, metavar="MiB",
                       help="size of the event buffer in MiB (default: 8)")
        p.add_argument("--dump-ebpf", action="store_true",
                       help="print the eBPF source and compiler flags, then exit")
        p.set_defaults(run=_run_live, module_cls=module)

    p = sub.add_parser("replay", help="replay a recording through the same decoders and outputs",
                       description="Replay a recording offline: no root, no bcc needed. "
                                   "Without FILE, replays the shipped demo recording.")
    p.add_argument("file", nargs="?", metavar="FILE")
    _add_output_options(p)
    p.add_argument("-p", "--pid", type=int, help="only events of this process id")
    p.add_argument("--comm", help="only events of processes with this command name")
    p.add_argument("--port", type=int, help="only connections with this port at either end")
    p.add_argument("--host", help="only connections with this IP address at either end")
    p.add_argument("--since", metavar="TIME", help="only events at or after this wall-clock "
                   "time (ISO 8601, e.g. 2026-11-24T15:55:23; naive means local time)")
    p.add_argument("--until", metavar="TIME", help="only events at or before this time")
    p.set_defaults(run=_run_replay)

    p = sub.add_parser("info", help="print a recording's metadata and counts")
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


# -- live ------------------------------------------------------------------------------

def _run_live(args: argparse.Namespace) -> int:
    # Imported here so that replay and info never import the live layer.
    from ecapture.live.session import LiveSession
    from ecapture.metadata import build_metadata
    from ecapture.record.writer import Writer

    module_cls: type[Module] = args.module_cls
    module = module_cls({**{o.dest: getattr(args, o.dest) for o in module_cls.options},
                         "capture_packets": args.model == "pcap"})
    bindings = bind([module])
    items: list[Record | Lost] = []
    session = LiveSession(module, bindings, items.append, force_perf=args.perf_buffer,
                          ringbuf_pages=max(1, args.mapsize * 256))
    if args.dump_ebpf:
        return _dump_ebpf(session)
    session.init()
    if args.model in ("keylog", "pcap"):
        module.require_keys()

    def on_signal(signum: int, _frame: Any) -> None:
        session.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    writer = None
    pipeline = None
    try:
        session.start()
        meta = build_metadata([module], bindings,
                              extra={"live": session.describe(), "model": args.model})
        if args.record:
            writer = Writer(args.record, meta)
        pipeline = make_pipeline(args, bindings, meta)
        buffer = "ring buffer" if session.features.ringbuf else "perf buffer"
        print(f"ecapture: {module.name}: {len(session.attached)} probes attached to "
              f"{', '.join(t.path for t in module.targets) or '-'} ({buffer}); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        session.run(until=None if deadline is None else lambda: time.monotonic() >= deadline,
                    after_poll=lambda: _deliver(items, writer, pipeline))
        session.drain()
        _deliver(items, writer, pipeline)
    finally:
        session.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        # The recording first: it must end cleanly even if printing the rest fails.
        if writer is not None:
            writer.close()
        if pipeline is not None:
            pipeline.close()
    return 0


def _deliver(items: list[Record | Lost], writer: Any, pipeline: Pipeline) -> None:
    batch = items[:]
    items.clear()
    for item in batch:
        if writer is not None:
            writer.write(item)  # the tee: recorded raw, before any decoding
        pipeline.feed(item)
    pipeline.tick(time.monotonic_ns())
    if writer is not None:
        writer.flush()
    sys.stdout.flush()


def _dump_ebpf(session: Any) -> int:
    from ecapture.live.session import kern_dir

    session.module.check()
    session.module.init()
    session.detect_features()
    print(f"// cflags: {' '.join(session.cflags())}")
    print((kern_dir() / session.module.source).read_text(), end="")
    return 0


# -- offline -----------------------------------------------------------------------------

def _run_replay(args: argparse.Namespace) -> int:
    from ecapture.record.reader import Reader

    path = Path(args.file) if args.file else default_recording()
    with Reader(str(path)) as reader:
        meta = reader.metadata
        accept = EventFilter(
            pid=args.pid, comm=args.comm, port=args.port, host=args.host,
            since_ns=parse_when(args.since) if args.since else None,
            until_ns=parse_when(args.until) if args.until else None,
            clock_offset_ns=int(meta.get("clock_offset_ns", 0)))
        pipeline = make_pipeline(args, bind_from_metadata(meta), meta,
                                 accept if accept.active else None)
        for item in reader:
            pipeline.feed(item)
        pipeline.close()
    status = reader.status
    damaged = bool(status.truncated or status.corrupt_frames)
    if status.corrupt_frames:
        print(f"ecapture: warning: {path}: skipped {status.corrupt_frames} corrupt records",
              file=sys.stderr)
    if status.truncated:
        print(f"ecapture: warning: {path} is truncated: the last {status.truncated_bytes} bytes "
              "were an incomplete record; everything before them was replayed",
              file=sys.stderr)
    # Everything readable was replayed; a non-zero status still tells scripts the file is
    # damaged (a capture killed with -9 ends like this).
    return DAMAGED if damaged else 0


def _run_info(args: argparse.Namespace) -> int:
    from ecapture.record.info import format_info, summarize

    info = summarize(args.file)
    print(format_info(info).rstrip("\n"))
    return 0 if info.status.clean_end and not info.status.corrupt_frames else DAMAGED

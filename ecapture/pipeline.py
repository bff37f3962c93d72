"""Record -> decode -> module dispatch -> filters -> conversations -> outputs: the one path
that live capture and replay share. No I/O of its own: items come from a source
(:mod:`ecapture.sources`), events go to the outputs given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ecapture import modules as registry
from ecapture.errors import DecodeError, RecordFormatError
from ecapture.events import Event, lost_notice
from ecapture.modules.base import EventMap, Module
from ecapture.outputs import Output
from ecapture.record import Fact, Item, Lost, Record
from ecapture.streams import Conversations

MAX_REPORTED_ERRORS = 5
# Perf buffers are per CPU: events of one connection can arrive out of order. Hold events
# this long (event time) to sort them; a ring buffer is one ordered queue and needs none.
PERF_REORDER_NS = 50_000_000


def reorder_window(metadata: Mapping[str, Any]) -> int:
    live = metadata.get("live") or {}
    return PERF_REORDER_NS if live.get("buffer") == "perf" else 0


@dataclass(frozen=True)
class Binding:
    """Which module and map a recording's map id stands for."""

    map_id: int
    module: Module
    map: EventMap

    def describe(self) -> dict[str, Any]:
        return {"id": self.map_id, "module": self.module.name, "name": self.map.name,
                "structs": self.map.fingerprints()}


def bind(modules: Iterable[Module]) -> list[Binding]:
    """Number the maps of the modules to run, in order."""
    out: list[Binding] = []
    for module in modules:
        for event_map in module.maps:
            out.append(Binding(len(out), module, event_map))
    return out


def bind_from_metadata(metadata: Mapping[str, Any]) -> list[Binding]:
    """Recreate the modules of a recording, with the options they were recorded with, and
    check that their struct layouts are the ones this ecapture decodes."""
    instances: dict[str, Module] = {}
    options = {m.get("name"): m.get("options", {}) for m in metadata.get("modules", [])}
    out: list[Binding] = []
    for entry in metadata.get("maps", []):
        name = entry.get("module")
        try:
            cls = registry.get(name)
        except Exception:
            raise RecordFormatError(f"recording uses module {name!r}, which this ecapture "
                                    "does not have") from None
        module = instances.setdefault(name, cls(options.get(name) or {}))
        event_map = next((m for m in cls.maps if m.name == entry.get("name")), None)
        if event_map is None:
            raise RecordFormatError(f"recording has map {name}/{entry.get('name')}, unknown "
                                    "to this ecapture")
        recorded = entry.get("structs", {})
        for struct_name, fp in event_map.fingerprints().items():
            if recorded.get(struct_name, fp) != fp:
                raise RecordFormatError(
                    f"recording's layout of {struct_name} differs from this ecapture's and no "
                    "migration is known; replay it with the ecapture version that recorded it")
        out.append(Binding(int(entry["id"]), module, event_map))
    return out


class Pipeline:
    def __init__(self, bindings: list[Binding], outputs: list[Output],
                 accept: Callable[[Event], bool] | None = None,
                 warn: Callable[[str], None] | None = None,
                 conversations: Conversations | None = None):
        self.bindings = {b.map_id: b for b in bindings}
        self.outputs = outputs
        self.accept = accept
        self.conversations = conversations
        self.warn = warn or (lambda msg: sys.stderr.write(f"ecapture: warning: {msg}\n"))
        self.decode_errors = 0
        self.events = 0
        self._writers = [o.write for o in outputs]

    def feed(self, item: Item) -> None:
        binding = self.bindings.get(item.map_id)
        if binding is None:
            self._error(f"record for unknown map id {item.map_id} skipped")
            return
        module = binding.module
        try:
            if isinstance(item, Record):
                events = module.dispatch(module.decode(binding.map.name, item.data))
            elif isinstance(item, Lost):
                events = (lost_notice(item.recv_ns, module.name, binding.map.name,
                                      item.count),)
            elif isinstance(item, Fact):
                events = module.apply(item.what, item.fields)
            for event in events:
                self._emit(event)
        except DecodeError as e:
            self._error(f"undecodable event skipped: {e}")

    def _error(self, msg: str) -> None:
        self.decode_errors += 1
        if self.decode_errors <= MAX_REPORTED_ERRORS:
            self.warn(msg)
        elif self.decode_errors == MAX_REPORTED_ERRORS + 1:
            self.warn("more decode errors; not reporting them one by one")

    def _emit(self, event: Event) -> None:
        if self.accept is not None and not self.accept(event):
            return
        if self.conversations is None:
            self._output(event)
        else:
            for out in self.conversations.feed(event):
                self._output(out)

    def _output(self, event: Event) -> None:
        self.events += 1
        for write in self._writers:
            write(event)

    def tick(self, now_ns: int) -> None:
        """Live only: at kernel time now_ns, let conversations and outputs release what
        they hold back for ordering, even when no new event moves time on."""
        if self.conversations is not None:
            for out in self.conversations.tick(now_ns):
                self._output(out)
        for output in self.outputs:
            tick = getattr(output, "tick", None)
            if tick is not None:
                tick(now_ns)

    def close(self) -> None:
        seen: set[int] = set()
        for binding in self.bindings.values():
            if id(binding.module) in seen:
                continue
            seen.add(id(binding.module))
            for out in binding.module.finish():
                self._emit(out)
        if self.conversations is not None:
            for out in self.conversations.finish():
                self._output(out)
        for output in self.outputs:
            output.close()

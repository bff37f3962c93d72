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
from ecapture.record import Item, Lost, Record
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
    """Items in, events out. Items are handled a batch at a time (:meth:`feed_all`): the
    batch's records are decoded and dispatched first, then their events go through the
    filter and the conversations in order, then to each output in turn, which writes them
    at once when it can (``write_all``). Each output sees what it would see one item at a
    time, in the same order; a batch costs far fewer calls per event."""

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
        # An output may take a list of events at once (write_all); else one at a time.
        self._writers: list[Callable[[list[Event]], None]] = [
            getattr(o, "write_all", None) or _one_at_a_time(o.write) for o in outputs]
        # What a record of each map id goes through, looked up once per record.
        self._routes = {b.map_id: (b.module, b.map.name, b.module.decode, b.module.dispatch)
                        for b in bindings}

    def feed(self, item: Item) -> None:
        self.feed_all((item,))

    def feed_all(self, items: Iterable[Item]) -> None:
        """Feed items in order: the same as feed() for each, in one go."""
        routes = self._routes
        events: list[Event] = []
        add = events.extend
        for item in items:
            route = routes.get(item.map_id)
            if route is None:
                self._error(f"record for unknown map id {item.map_id} skipped")
                continue
            module, map_name, decode, dispatch = route
            try:
                if isinstance(item, Record):
                    add(dispatch(decode(map_name, item.data)))
                elif isinstance(item, Lost):
                    events.append(lost_notice(item.recv_ns, module.name, map_name, item.count))
                else:  # a Fact
                    add(module.apply(item.what, item.fields))
            except DecodeError as e:
                self._error(f"undecodable event skipped: {e}")
        if events:
            self._emit(events)

    def _error(self, msg: str) -> None:
        self.decode_errors += 1
        if self.decode_errors <= MAX_REPORTED_ERRORS:
            self.warn(msg)
        elif self.decode_errors == MAX_REPORTED_ERRORS + 1:
            self.warn("more decode errors; not reporting them one by one")

    def _emit(self, events: list[Event]) -> None:
        """Filter, then conversations, then outputs."""
        if self.accept is not None:
            events = list(filter(self.accept, events))
        if self.conversations is not None:
            events = self.conversations.feed_all(events)
        self._output(events)

    def _output(self, events: list[Event]) -> None:
        if events:
            self.events += len(events)
            for write_all in self._writers:
                write_all(events)

    def tick(self, now_ns: int) -> None:
        """Live only: at kernel time now_ns, let conversations and outputs release what
        they hold back for ordering, even when no new event moves time on."""
        if self.conversations is not None:
            self._output(self.conversations.tick(now_ns))
        for output in self.outputs:
            tick = getattr(output, "tick", None)
            if tick is not None:
                tick(now_ns)

    def _modules(self) -> list[Module]:
        modules: dict[int, Module] = {}
        for binding in self.bindings.values():
            modules.setdefault(id(binding.module), binding.module)
        return list(modules.values())

    def summary(self) -> list[str]:
        """What the modules add to the summary at exit (see Module.summary)."""
        return [line for module in self._modules() for line in module.summary()]

    def close(self) -> None:
        for module in self._modules():
            self._emit(list(module.finish()))
        if self.conversations is not None:
            self._output(self.conversations.finish())
        for output in self.outputs:
            output.close()


def _one_at_a_time(write: Callable[[Event], None]) -> Callable[[list[Event]], None]:
    def write_all(events: list[Event]) -> None:
        for event in events:
            write(event)
    return write_all

"""Every registered module's structs and decoder, driven by the registry: struct round
trips through construct and the fast codec, decoding of any declared event, truncated
events refused by name; plus the bash module's own rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecapture import modules
from ecapture.errors import DecodeError
from ecapture.events import Event
from ecapture.modules.bash import BashLine, BashModule
from ecapture.outputs.jsonl import JsonOutput
from ecapture.render import Style
from ecapture.structs import layout
from ecapture.structs.bash import BASH_LINE_MAX, EVENT_BASH_READLINE, bash_readline_event_t
from ecapture.structs.layout import KernelStruct, header_codec
from ecapture.testing.factories import make_event
from ecapture.testing.strategies import module_events, struct_values

STRUCTS = {ks.name: ks for module in modules.MODULES for m in module.maps
           for ks in m.structs.values()}


@pytest.mark.parametrize("ks", STRUCTS.values(), ids=list(STRUCTS))
@given(data=st.data())
def test_struct_round_trip(ks: KernelStruct, data: st.DataObject) -> None:
    values = data.draw(struct_values(ks.decl))
    raw = ks.decl.build(values)
    parsed = ks.decl.parse(raw)
    for key, value in values.items():
        if key in parsed:
            assert parsed[key] == value
    assert ks.decl.build(parsed) == raw
    # The hot-path codec is derived from the declaration and must agree with it.
    codec = header_codec(ks.decl)
    fast = dict(zip(codec.names, codec.codec.unpack_from(raw), strict=True))
    for key in codec.names:
        assert fast[key] == parsed[key]


@pytest.mark.parametrize("module_cls", modules.MODULES, ids=lambda m: m.name)
@given(data=st.data())
def test_decode_takes_any_declared_event(module_cls: type[modules.Module],
                                         data: st.DataObject) -> None:
    map_name, raw = data.draw(module_events(module_cls))
    module = module_cls({})
    try:
        decoded = module.decode(map_name, raw)
    except DecodeError:
        return  # e.g. a random length field that points past the event: refused by name
    for event in [*module.dispatch(decoded), *module.finish()]:
        assert isinstance(event, Event)
        # Every event renders in both models without knowing its class.
        assert isinstance(event.text(Style()), str)
        event.json(Style())


@pytest.mark.parametrize("module_cls", modules.MODULES, ids=lambda m: m.name)
@given(data=st.data())
def test_truncated_events_are_decode_errors(module_cls: type[modules.Module],
                                            data: st.DataObject) -> None:
    map_name, raw = data.draw(module_events(module_cls))
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):  # never garbage, never another exception
        module_cls({}).decode(map_name, raw[:cut])


@pytest.mark.parametrize("module_cls", modules.MODULES, ids=lambda m: m.name)
@given(data=st.data())
def test_perf_padding_is_trimmed_to_what_was_sent(module_cls: type[modules.Module],
                                                  data: st.DataObject) -> None:
    map_name, raw = data.draw(module_events(module_cls))
    pad = data.draw(st.binary(max_size=7))
    event_map = next(m for m in module_cls.maps if m.name == map_name)
    assert event_map.sample_size(raw + pad) == len(raw)


def test_factory_event_decodes_to_its_fields() -> None:
    raw = make_event(bash_readline_event_t, kind=EVENT_BASH_READLINE, pid=7, uid=1000,
                     timestamp_ns=5, comm=b"bash", line=b"ls -l")
    assert BashModule({}).decode("events", raw) == BashLine(
        timestamp_ns=5, pid=7, tid=7, uid=1000, comm="bash", line=b"ls -l", truncated=False)


def test_factory_refuses_unknown_fields_and_overflow() -> None:
    with pytest.raises(TypeError, match="nope"):
        make_event(bash_readline_event_t, nope=1)
    with pytest.raises(ValueError, match="comm"):
        make_event(bash_readline_event_t, comm=b"x" * 17)


@pytest.mark.parametrize("line_len", [BASH_LINE_MAX, 10])
def test_bash_line_length_must_fit(line_len: int) -> None:
    # 10 claimed, 3 present; or the kernel's maximum, which it never sends. construct
    # will not build an inconsistent event, so patch the length field in place.
    raw = bytearray(make_event(bash_readline_event_t, kind=EVENT_BASH_READLINE, line=b"abc"))
    offset = next(f.offset for f in layout(bash_readline_event_t) if f.name == "line_len")
    struct.pack_into("<I", raw, offset, line_len)
    with pytest.raises(DecodeError, match="line bytes"):
        BashModule({}).decode("events", bytes(raw))


def test_bash_line_in_text_and_json_models() -> None:
    line = BashLine(timestamp_ns=0, pid=3, tid=3, uid=0, comm="bash",
                    line=b"echo \x1b[31m\xff", truncated=True)
    text = line.text(Style())
    assert text.endswith("bash pid 3 uid 0  $ echo \\x1b[31m\\xff  (cut at 11 bytes)\n")
    assert text.count("\n") == 1  # escapes, never raw control characters

    class Sink:
        def __init__(self) -> None:
            self.text = ""

        def write(self, s: str) -> None:
            self.text += s

    d = JsonOutput(Sink(), 0).to_dict(line)  # type: ignore[arg-type]
    assert d is not None
    assert d["type"] == "bash" and d["line_encoding"] == "base64" and d["truncated"] is True

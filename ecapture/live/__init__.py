"""The live layer: the only code that imports bcc, uses ctypes or needs root.

It checks prerequisites, compiles kern/*.c, attaches probes, polls buffers and turns each
sample into a :class:`~ecapture.record.Record` (a copy of the bytes, nothing more) that it
hands to the shared pipeline, exactly as replay does.
"""

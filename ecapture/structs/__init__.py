"""Construct declarations of every struct that crosses from kernel to user space.

One file per kern/ header; each struct is named after its C struct and lists the same
fields in the same order. tests/unit/test_struct_layout.py compiles the C headers with the
host compiler and checks every offset against :func:`layout`. Pure: no I/O here.
"""

from ecapture.structs.layout import Field, fingerprint, layout

__all__ = ["Field", "fingerprint", "layout"]

"""ecapture: capture TLS plaintext with eBPF, record raw kernel events, replay them offline.

The data path has one shape for both sources::

    live:    kern/<module>.c --(bcc ring/perf buffer)--> Record --+
    replay:  .ecap file --(record.Reader)------------> Record --+--> decode -> module -> outputs
    record:  Record --(record.Writer, a tee before decoding)

Only :mod:`ecapture.live` touches bcc, ctypes or root; everything else runs anywhere.
"""

__version__ = "0.1.0"

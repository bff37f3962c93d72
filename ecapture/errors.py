"""The error hierarchy. Every error a user can cause is one of these, and its message is
one line that says what went wrong and what to do; the CLI prints it and exits non-zero."""


class EcaptureError(Exception):
    """Base of all errors ecapture reports to the user."""

    exit_code = 1


class ConfigError(EcaptureError):
    """Bad command-line options or an unknown module."""

    exit_code = 2


class RecordFormatError(EcaptureError):
    """A recording that cannot be read: wrong magic, unknown format version, bad header."""


class RecordWriteError(EcaptureError):
    """The recording could not be created or written (disk full, permissions, ...)."""


class DecodeError(EcaptureError):
    """Raw event bytes that do not match the struct they claim to be."""


class PrerequisiteError(EcaptureError):
    """Live capture cannot start: not root, no bcc, no kernel headers, ..."""


class AttachError(EcaptureError):
    """A probe could not be compiled or attached: missing library or symbol, verifier error."""

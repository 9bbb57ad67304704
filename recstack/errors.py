"""User-facing errors.

Raise `RecstackError` (or a subclass) at the edges, with a one-line message that names the file,
column or value at fault and says what to do. The CLI prints it as one line and exits with 2;
anything else escaping is a bug.
"""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (polars messages run to a page)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class RecstackError(Exception):
    """An error caused by the user's input or environment, with the fix in the message."""


class DataError(RecstackError):
    """A raw log, catalogue or prepared dataset cannot be read or fails a contract."""


class DownloadError(RecstackError):
    """A download failed (unreachable URL, checksum mismatch)."""

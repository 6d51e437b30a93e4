"""One-line errors for output files the debugger commands cannot write (read-only, full disk)."""
from __future__ import annotations


def output_error(error: OSError) -> ValueError:
    """A ValueError naming the path and the reason; the commands print it as one line and exit 2."""
    where = error.filename or "the output"
    return ValueError(f"cannot write {where}: {error.strerror or error}")

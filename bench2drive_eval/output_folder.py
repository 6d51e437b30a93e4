"""Write a command's output files all or nothing: into a staging folder first, then moved into --out."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from bench2drive_eval.cli import EvalError


class OutputError(EvalError):
    """--out cannot be written (read-only, full, not a folder); the message names the path and the reason."""


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Yield an empty staging folder inside `out`; when the block ends without error, move its files into `out`.

    A failure while writing leaves `out` as it was (the staging folder is removed) and is raised as one
    OutputError line. Moving is a rename inside one folder, so it needs no space and cannot half-write a file.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as error:
        raise OutputError(f"{option} {out}: cannot write there ({_reason(error)})") from None
    try:
        try:
            yield staging
        except OSError as error:
            raise OutputError(f"{option} {out}: writing the output failed ({_reason(error)}); "
                              "nothing was changed there") from None
        try:
            for item in sorted(staging.iterdir()):
                os.replace(item, out / item.name)
        except OSError as error:
            raise OutputError(f"{option} {out}: moving the output into place failed ({_reason(error)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

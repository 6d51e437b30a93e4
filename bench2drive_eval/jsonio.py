"""Reading and writing JSON files safely: atomic writes, and read errors that name the file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class JSONFileError(ValueError):
    """A JSON file is missing, truncated or not valid JSON; the message names the file."""


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that readers only ever see the old or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON so that readers only ever see the old or the complete new file."""
    write_text_atomic(path, json.dumps(data, indent=indent))


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; raise JSONFileError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JSONFileError(f"{path}: file not found") from None
    except OSError as error:
        raise JSONFileError(f"{path}: cannot read ({error.strerror})") from None
    if not text.strip():
        raise JSONFileError(f"{path}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JSONFileError(
            f"{path}: not valid JSON (truncated or corrupt) at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None

"""Reading and writing JSON files safely: atomic writes, strict JSON (no NaN), errors that name the file."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping


class JSONFileError(ValueError):
    """A JSON file is missing, truncated or not valid JSON; the message names the file."""


class FileWriteError(JSONFileError, OSError):
    """A file cannot be written (read-only or full location, non-finite number); the message names the file.

    Also an OSError, so that callers which already handle a failed write (the runner) keep doing so.
    """


def _first_non_finite(data: Any, path: str = "") -> tuple[str, float] | None:
    """Key path and value of the first NaN/inf float inside `data`, None when all numbers are finite."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "(top level)", data
    if isinstance(data, Mapping):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, key)
        if found is not None:
            return found
    return None


def dumps_strict(data: Any, where: str | os.PathLike, indent: int | None = 2) -> str:
    """JSON text of `data`; FileWriteError naming `where` and the field when a number is NaN or infinite."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        found = _first_non_finite(data)
        field = f" at {found[0]} ({found[1]})" if found else ""
        raise FileWriteError(f"{where}: refusing to write a non-finite number{field}: it is not valid JSON") from None


def _write_temporary(path: Path, text: str) -> str:
    """`text` in a fsynced temporary file beside `path`; returns its name (the caller renames or removes it)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    return tmp_name


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _cannot_write(path: Path, error: OSError) -> FileWriteError:
    reason = error.strerror or str(error)
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        reason = "a parent of it is a file, not a folder"
    elif error.filename and not str(error.filename).startswith(str(path.parent / f".{path.name}.")):
        if Path(error.filename) != path:
            reason = f"{error.filename}: {reason}"
    return FileWriteError(f"{path}: cannot write ({reason})")


def write_texts_atomic(files: Mapping[str | os.PathLike, str]) -> None:
    """Write several files all or nothing: every temporary file is complete before the first is renamed.

    On any failure (read-only or full location, a parent that is a file) no target is changed, the
    temporary files are removed, and FileWriteError names the file and the reason.
    """
    written: list[tuple[str, Path]] = []
    current = Path()
    try:
        for target, text in files.items():
            current = Path(target)
            current.parent.mkdir(parents=True, exist_ok=True)
            written.append((_write_temporary(current, text), current))
        for tmp_name, target in written:
            current = target
            os.replace(tmp_name, target)
    except OSError as error:
        for tmp_name, _ in written:
            _remove_quietly(tmp_name)
        raise _cannot_write(current, error) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that readers only ever see the old or the complete new file."""
    write_texts_atomic({path: text})


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2, allow_nan: bool = False) -> None:
    """Write `data` as JSON so that readers only ever see the old or the complete new file.

    Non-finite numbers are refused (FileWriteError naming file and field) unless `allow_nan`, which is only
    for copies of files another program wrote that way (the evaluator's own checkpoints).
    """
    text = json.dumps(data, indent=indent) if allow_nan else dumps_strict(data, path, indent)
    write_text_atomic(path, text)


def read_text_file(path: str | os.PathLike, error: type[Exception] = JSONFileError, label: str = "") -> str:
    """A UTF-8 text file's contents; `error` (message "<label or path>: file not found / not UTF-8 text /
    cannot read") for anything a user's file can be instead of text."""
    path = Path(path)
    where = label or str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: file not found") from None
    except UnicodeDecodeError as decode_error:
        raise error(f"{where}: not UTF-8 text (byte {decode_error.start})") from None
    except OSError as os_error:
        raise error(f"{where}: cannot read ({os_error.strerror or os_error})") from None


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; raise JSONFileError naming the file and the problem."""
    path = Path(path)
    text = read_text_file(path)
    if not text.strip():
        raise JSONFileError(f"{path}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JSONFileError(
            f"{path}: not valid JSON (truncated or corrupt) at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None

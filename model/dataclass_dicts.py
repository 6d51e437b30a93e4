"""Build a tree of typed dataclasses from a parsed YAML/JSON mapping, with errors that name the key path.

`build_dataclass(cls, values, source)` is the one reader behind the model, training and agent configs:
- a key the dataclass does not have is an error naming it, its section and the known keys;
- a field annotated with a dataclass is a nested section (a mapping); keys it leaves out keep the
  field's default instance's values (so `speed_pid: {kp: 3}` keeps the default ki, kd, window);
- scalars are type-checked against their annotation (bool, int, float, str, Literal, X | None),
  ints are accepted for floats, and lists become the annotated tuple/list;
- a required field that is missing, or an error from a dataclass's own `__post_init__`, is reported
  with `source` in front, as the reader's own error type.
Annotations are read with `typing.get_type_hints`, so the dataclass's module must import every name
its annotations use (not only under TYPE_CHECKING).
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
# A custom reader for one dataclass type: (the mapping, "<source>: <key path>") -> the instance.
Builder = Callable[[Mapping[str, Any], str], Any]

_SCALAR_NOUNS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_MAX_SHOWN = 80  # characters of a bad value quoted in a message


class _Mismatch(Exception):
    """A value that does not fit its annotation; turned into the reader's error type at the top."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class _Reader:
    source: str
    error: type[Exception]
    builders: Mapping[type, Builder]

    def fail(self, message: str) -> Exception:
        return self.error(f"{self.source}: {message}")


def build_dataclass(cls: type[T], values: Any, source: str, *, error: type[Exception] = ValueError,
                    builders: Mapping[type, Builder] | None = None) -> T:
    """An instance of dataclass `cls` from `values` (a mapping of its fields, nested mappings for sections).

    Every error is an `error(...)` whose message starts with `source` (e.g. the file name) and names
    the offending key by its dotted path. `builders` reads the given dataclass types in their own way.
    """
    reader = _Reader(source, error, dict(builders or {}))
    try:
        return _build(cls, values, "", None, reader)
    except _Mismatch as mismatch:
        raise reader.fail(str(mismatch)) from None


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section(path: str) -> str:
    return f"section {path!r}" if path else "the top level"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(cls: type, values: Any, path: str, base: Any, reader: _Reader) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    known = ", ".join(sorted(fields))
    if not isinstance(values, Mapping):
        raise _Mismatch(path, f"{_section(path)} must be a mapping (known keys: {known}), got {_shown(values)}")
    unknown = [key for key in values if key not in fields]
    if unknown:
        where = f" in section {path!r}" if path else ""
        noun = "key" if len(unknown) == 1 else "keys"
        raise reader.fail(f"unknown {noun} {', '.join(repr(k) for k in unknown)}{where} (known: {known})")
    hints = _field_types(cls)
    kwargs = {name: _convert(value, hints[name], _join(path, name), _default(fields[name], base), reader)
              for name, value in values.items()}
    if base is None:
        missing = [f for name, f in fields.items() if name not in kwargs and _default(f, None) is dataclasses.MISSING]
        if missing:
            first = missing[0]
            kind = "section" if dataclasses.is_dataclass(hints[first.name]) else "key"
            raise reader.fail(f"{kind} {_join(path, first.name)!r} is required")
    try:
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except (TypeError, ValueError) as error:  # __post_init__ checks
        raise reader.fail(str(error)) from None


def _default(f: dataclasses.Field, base: Any) -> Any:
    """The value a field has when its key is left out: the base instance's, else the field default."""
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _convert(value: Any, hint: Any, path: str, default: Any, reader: _Reader) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args, hint, path, default, reader)
    if origin is typing.Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise _Mismatch(path, f"key {path!r} must be {_describe(hint)}, got {_shown(value)}")
    if origin in (tuple, list):
        return _convert_sequence(value, origin, args, hint, path, reader)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if hint in reader.builders:
            if not isinstance(value, Mapping):
                raise _Mismatch(path, f"section {path!r} must be a mapping, got {_shown(value)}")
            return reader.builders[hint](value, f"{reader.source}: {path}")
        base = default if isinstance(default, hint) else None
        return _build(hint, value, path, base, reader)
    if hint in _SCALAR_NOUNS:
        return _convert_scalar(value, hint, path)
    return value  # Any and other annotations are not checked


def _convert_union(value: Any, args: tuple, hint: Any, path: str, default: Any, reader: _Reader) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    for option in options:
        try:
            return _convert(value, option, path, default, reader)
        except _Mismatch as mismatch:
            if len(options) == 1 and mismatch.path != path:
                raise  # keep the detail of a bad list item or nested key
    raise _Mismatch(path, f"key {path!r} must be {_describe(hint)}, got {_shown(value)}")


def _convert_sequence(value: Any, origin: type, args: tuple, hint: Any, path: str, reader: _Reader) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _Mismatch(path, f"key {path!r} must be {_describe(hint)}, got {_shown(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _Mismatch(path, f"key {path!r} must be {_describe(hint)}, got {_shown(value)}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    items = [_convert(item, item_type, f"{path}[{i}]", dataclasses.MISSING, reader)
             for i, (item, item_type) in enumerate(zip(value, item_types))]
    return origin(items)


def _convert_scalar(value: Any, hint: type, path: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if ok:
        return hint(value) if hint in (int, float) else value
    message = f"key {path!r} must be {_SCALAR_NOUNS[hint]}, got {_shown(value)}"
    if hint is float and isinstance(value, str) and _is_number(value):
        message += " (YAML reads 5e-5 as text: write 5.0e-5)"
    raise _Mismatch(path, message)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    if origin in (tuple, list):
        return f"a list (each item {_describe(args[0])})" if args else "a list"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "a mapping"
    return _SCALAR_NOUNS.get(hint, getattr(hint, "__name__", str(hint)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."

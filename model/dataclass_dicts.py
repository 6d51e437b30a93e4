"""Build a tree of typed dataclasses from a parsed YAML/JSON mapping, validated by pydantic v2.

`build_dataclass(cls, values, source)` is the one reader behind the model, training and agent configs.
Each dataclass gets a mirror pydantic model (built once per class and cached) in which
- every bool / int / float / str is strict: 32.7 is not an int, `true` is not 1, "abc" is not an int,
  and an int is accepted for a float (and becomes a float);
- no float anywhere may be NaN or inf;
- a key the dataclass does not have is an error naming it, its section and the known keys;
- a field annotated with a dataclass is a nested section (a mapping); keys it leaves out keep the
  field's default instance's values (so `speed_pid: {kp: 3}` keeps the default ki, kd, window);
- lists become the annotated tuple / list; `Literal` values must match in value and type;
- `typing.Annotated[..., pydantic.Field(gt=0)]` constraints on a dataclass field are enforced.
The validated values then construct the real dataclasses, so `__post_init__` checks run as before;
their errors (and every validation error) are re-raised as `error(f"{source}: ...")` naming the
key by its dotted path and showing the value. Annotations are read with `typing.get_type_hints`, so
the dataclass's module must import every name its annotations use (not only under TYPE_CHECKING).
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, WrapValidator, create_model
from pydantic_core import PydanticCustomError

T = TypeVar("T")
# A custom reader for one dataclass type: (the mapping, "<source>: <key path>") -> the instance.
Builder = Callable[[Mapping[str, Any], str], Any]

_SCALAR_NOUNS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_MAX_SHOWN = 80  # characters of a bad value quoted in a message
_MIRROR_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
# pydantic error types that are about the value's range, not its type: their own wording is kept
_CONSTRAINT_ERRORS = frozenset({
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "too_short", "too_long",
    "string_too_short", "string_too_long", "string_pattern_mismatch",
})
_SECTION_ERRORS = frozenset({"model_type", "model_attributes_type", "dataclass_type", "dict_type"})
_DATACLASS_OF: dict[type, type] = {}  # mirror model -> the dataclass it mirrors
_ATTRIBUTE_PREFIX = "field_"


class _Unbuildable(Exception):
    """A problem found while turning validated values into dataclasses; gets the source in front."""


def build_dataclass(cls: type[T], values: Any, source: str, *, error: type[Exception] = ValueError,
                    builders: Mapping[type, Builder] | None = None) -> T:
    """An instance of dataclass `cls` from `values` (a mapping of its fields, nested mappings for sections).

    Every error is an `error(...)` whose message starts with `source` (e.g. the file name) and names
    the offending key by its dotted path. `builders` reads the given dataclass types in their own way
    (called with the section's mapping and "<source>: <key path>").
    """
    builders = dict(builders or {})
    mirror = _mirror(cls, None, frozenset(builders))
    try:
        validated = mirror.model_validate(values)
    except ValidationError as failure:
        raise error(f"{source}: {_describe_failure(failure, cls, values)}") from None
    try:
        return _to_dataclass(validated, "", source, builders)
    except _Unbuildable as problem:
        raise error(f"{source}: {problem}") from None


# ---- the mirror models ---------------------------------------------------------------------------------

def _mirror(cls: type, base: Any, builder_types: frozenset[type]) -> type[BaseModel]:
    """The pydantic model that validates a mapping of `cls`'s fields (defaults from `base` when given)."""
    try:
        return _cached_mirror(cls, base, builder_types)
    except TypeError:  # an unhashable default instance: build it uncached
        return _cached_mirror.__wrapped__(cls, base, builder_types)


@functools.lru_cache(maxsize=None)
def _cached_mirror(cls: type, base: Any, builder_types: frozenset[type]) -> type[BaseModel]:
    hints = _field_types(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default_value(f, base)
        annotation = _mirror_hint(hints[f.name], default, builder_types)
        # mirror attributes get a prefix so that no key can shadow a BaseModel attribute (`copy`, `json`)
        if base is None and f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            spec = Field(default_factory=f.default_factory, alias=f.name)
        elif default is dataclasses.MISSING:
            spec = Field(alias=f.name)
        else:
            spec = Field(default=default, alias=f.name)
        fields[_ATTRIBUTE_PREFIX + f.name] = (annotation, spec)
    model = create_model(f"{cls.__name__}Fields", __config__=_MIRROR_CONFIG, **fields)
    _DATACLASS_OF[model] = cls
    return model


def _default_value(f: dataclasses.Field, base: Any) -> Any:
    """The value a field has when its key is left out: the base instance's, else the field default."""
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _mirror_hint(hint: Any, default: Any, builder_types: frozenset[type]) -> Any:
    """`hint` with strict scalars, exact literals and mirror models in place of dataclasses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return Annotated[(_mirror_hint(args[0], default, builder_types), *hint.__metadata__)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_mirror_hint(a, default, builder_types) for a in args)]
    if origin is typing.Literal:
        return Annotated[hint, BeforeValidator(functools.partial(_exact_literal, args))]
    if origin in (tuple, list):
        if not args:
            return hint
        return origin[tuple(a if a is Ellipsis else _mirror_hint(a, dataclasses.MISSING, builder_types) for a in args)]
    if origin is dict and args:
        return dict[tuple(_mirror_hint(a, dataclasses.MISSING, builder_types) for a in args)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if hint in builder_types:
            return Any  # read by its builder after validation
        nested = _mirror(hint, default if isinstance(default, hint) else None, builder_types)
        return Annotated[nested, WrapValidator(functools.partial(_instance_as_it_is, hint))]
    if hint in _SCALAR_NOUNS:
        return Annotated[hint, Strict()]
    return hint  # Any and other annotations are not checked


def _exact_literal(allowed: tuple, value: Any) -> Any:
    if any(value == a and type(value) is type(a) for a in allowed):
        return value
    raise PydanticCustomError("literal_error", "Input should be one of {expected}", {"expected": repr(allowed)})


def _instance_as_it_is(cls: type, value: Any, handler: Callable[[Any], Any]) -> Any:
    return value if isinstance(value, cls) else handler(value)


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


# ---- validated mirror -> dataclasses -------------------------------------------------------------------

def _to_dataclass(model: BaseModel, path: str, source: str, builders: Mapping[type, Builder]) -> Any:
    cls = _DATACLASS_OF[type(model)]
    hints = _field_types(cls)
    kwargs = {}
    for attribute in type(model).model_fields:
        name = attribute[len(_ATTRIBUTE_PREFIX):]
        value, where = getattr(model, attribute), _join(path, name)
        reader = builders.get(_strip(hints[name]))
        if reader is not None and not isinstance(value, _strip(hints[name])) and value is not None:
            if not isinstance(value, Mapping):
                raise _Unbuildable(f"section {where!r} must be a mapping, got {_shown(value)}")
            value = reader(value, f"{source}: {where}")
        kwargs[name] = _unmirror(value, where, source, builders)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # __post_init__ checks
        raise _Unbuildable(str(error)) from None


def _unmirror(value: Any, path: str, source: str, builders: Mapping[type, Builder]) -> Any:
    if isinstance(value, BaseModel) and type(value) in _DATACLASS_OF:
        return _to_dataclass(value, path, source, builders)
    if isinstance(value, (list, tuple)):
        return type(value)(_unmirror(v, f"{path}[{i}]", source, builders) for i, v in enumerate(value))
    return value


def _strip(hint: Any) -> Any:
    """The type under Annotated[...] and `X | None`."""
    while True:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is Annotated:
            hint = args[0]
        elif origin in (typing.Union, types.UnionType) and len([a for a in args if a is not type(None)]) == 1:
            hint = next(a for a in args if a is not type(None))
        else:
            return hint


# ---- messages ------------------------------------------------------------------------------------------

def _describe_failure(failure: ValidationError, cls: type, values: Any) -> str:
    problems = failure.errors(include_url=False)
    unknown = [p for p in problems if p["type"] in ("extra_forbidden", "invalid_key")]  # invalid: not a string
    if unknown:
        parent = unknown[0]["loc"][:-1]
        names = [p["loc"][-1] for p in unknown if p["loc"][:-1] == parent]
        path, hint, _ = _resolve(cls, parent)
        where = f" in section {path!r}" if path else ""
        noun = "key" if len(names) == 1 else "keys"
        return f"unknown {noun} {', '.join(repr(n) for n in names)}{where} (known: {_known_keys(hint)})"
    problem = problems[0]
    kind = problem["type"]
    loc = tuple(problem["loc"])
    path, hint, used = _resolve(cls, loc)
    if used < len(loc):  # inside a union of several types: the message is about the whole value
        kind = "union"
    elif kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length tuple with too few items
        path, hint, used = _resolve(cls, loc[:-1])
        kind = "union"
    elif kind == "too_long" and _is_fixed_tuple(hint):
        kind = "union"
    value = _value_at(values, loc[:used], problem.get("input"))
    if kind == "missing":
        noun = "section" if dataclasses.is_dataclass(_strip(hint)) else "key"
        return f"{noun} {path!r} is required"
    if kind in _SECTION_ERRORS and dataclasses.is_dataclass(_strip(hint)):
        where = f"section {path!r}" if path else "the top level"
        return f"{where} must be a mapping (known keys: {_known_keys(hint)}), got {_shown(value)}"
    if kind == "finite_number":
        return f"key {path!r} must be a finite number, got {_shown(value)}"
    if kind in _CONSTRAINT_ERRORS:
        return f"key {path!r} {_must(problem['msg'])}, got {_shown(value)}"
    if kind == "value_error" or kind.startswith("assertion"):
        return f"key {path!r}: {problem['msg']}, got {_shown(value)}"
    message = f"key {path!r} must be {_describe(hint)}, got {_shown(value)}"
    if float in _members(hint) and isinstance(value, str) and _is_number(value):
        message += " (YAML reads 5e-5 as text: write 5.0e-5)"
    return message


def _resolve(cls: type, loc: tuple) -> tuple[str, Any, int]:
    """(dotted path, annotation, how many loc parts were followed) of an error location.

    Stops at a union of several types: pydantic's location then goes on with a member's tag.
    """
    hint: Any = cls
    path = ""
    for used, part in enumerate(loc):
        hint = _strip(hint)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            return path, hint, used
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(part, str):
            hint = _field_types(hint).get(part, Any)
            path = _join(path, part)
        elif origin in (tuple, list) and isinstance(part, int):
            fixed = origin is tuple and args and args[-1] is not Ellipsis
            hint = (args[part] if part < len(args) else Any) if fixed else (args[0] if args else Any)
            path = f"{path}[{part}]"
        elif origin is dict:
            hint = args[1] if args else Any
            path = f"{path}[{part!r}]"
        else:
            return path, hint, used
    return path, hint, len(loc)


def _value_at(values: Any, loc: tuple, fallback: Any) -> Any:
    node = values
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return fallback
    return node


def _known_keys(hint: Any) -> str:
    cls = _strip(hint)
    return ", ".join(sorted(f.name for f in dataclasses.fields(cls) if f.init))


def _must(pydantic_message: str) -> str:
    """pydantic's "Input should be greater than 0" -> "must be greater than 0"."""
    prefix = "Input should "
    return "must " + pydantic_message[len(prefix):] if pydantic_message.startswith(prefix) else pydantic_message


def _members(hint: Any) -> list[Any]:
    hint = _strip(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [_strip(a) for a in typing.get_args(hint)]
    return [hint]


def _is_fixed_tuple(hint: Any) -> bool:
    hint = _strip(hint)
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and bool(args) and args[-1] is not Ellipsis


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _describe(args[0])
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
    if hint in _SCALAR_NOUNS:
        return _SCALAR_NOUNS[hint]
    return getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."

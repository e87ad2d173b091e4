"""Typed checks of config values: every field of a config dataclass (or key of a plain config section) against its
annotation, strictly (no "128" for an int, no 4.0 for a number of heads, no "no" for a bool, no NaN), by pydantic.

Ranges and choices stay in each config's own `validate()`; this module only adds what dataclasses never check, the
types. Every error is a `ConfigError` that names the key, the value and what is allowed.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import fields
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """An unknown or invalid configuration field."""


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint, config=_STRICT)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _describe(hint: Any) -> str:
    """"an integer or null" for `int | None`; the annotation itself for containers ("list[int]")."""
    if hint in _NAMES:
        return _NAMES[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and all(
            a in _NAMES for a in args):
        return " or ".join(_NAMES[a] for a in args)
    return str(hint).replace("typing.", "")


def _lists_to_tuples(value: Any, hint: Any) -> Any:
    """JSON and YAML have no tuples: accept a list where the annotation says tuple."""
    origins = {typing.get_origin(h) for h in (hint, *typing.get_args(hint))}
    if tuple in origins and isinstance(value, list):
        return tuple(value)
    return value


def check_value(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type `hint` (ints accepted for floats, lists for tuples) -> the value.

    Raises:
        ConfigError: "<key>=<value> (<type>); expected <hint>", with the offending element for containers.
    """
    try:
        return _adapter(hint).validate_python(_lists_to_tuples(value, hint))
    except ValidationError as err:
        first = err.errors()[0]
        where = "".join(f"[{p!r}]" for p in first["loc"] if not isinstance(p, str) or p not in _TYPE_TAGS)
        inner = (f" ({key}{where}={first['input']!r}: {first['msg'].lower()})" if where
                 else " (a finite number)" if "finite" in first["msg"] else "")
        raise ConfigError(f"{key}={value!r} ({type(value).__name__}); expected {_describe(hint)}{inner}") from None


# the tags pydantic puts in an error's location for union members ("int", "str", ...), not keys or indices
_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list[int]", "list[str]", "list[float]", "dict", "tuple"}


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass `obj` against its annotation, in place (ints become floats where the
    field is a float, lists tuples where it is a tuple). Errors name `<prefix><field>`."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = check_value(f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)


def check_section(section: str, values: Any, schema: dict[str, Any], required: tuple[str, ...] = ()) -> dict:
    """A plain config section (a dict from YAML) against `schema` ({key: type hint}): unknown keys, missing required
    keys and wrong types raise a `ConfigError` naming `section.key`. Returns the checked values."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {type(values).__name__} {values!r}")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; valid keys: {sorted(schema)}")
    missing = [k for k in required if k not in values]
    if missing:
        raise ConfigError(f"{section}: missing key(s) {missing}")
    return {k: check_value(f"{section}.{k}", v, schema[k]) for k, v in values.items()}


def check_range(key: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise a `ConfigError` unless low <= value <= high (strict where `*_open`)."""
    ok = ((low is None or (value > low if low_open else value >= low))
          and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value!r}; expected a value in {lo or '(-inf'}, {hi or 'inf)'}")

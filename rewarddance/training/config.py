"""Reading a trainer's settings dataclass from YAML, with command-line overrides, each value converted to its
field's type.

YAML 1.1 (PyYAML) reads ``5e-5`` and ``1e-3`` as strings (a float needs a dot there), and a command-line override
``--lr 5e-5`` arrives the same way; :func:`coerce_settings` turns such values into what the field declares
(``float``, ``int``, ``bool``, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict``) or raises a one-line
``ValueError`` naming the setting and the value. Every trainer config calls it first thing in ``__post_init__``, so
a config built in Python gets the same treatment as one read from a file.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import MISSING, fields

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "~", "")


class _Mismatch(Exception):
    """A value that does not fit a type (turned into a ValueError naming the setting)."""


def _type_name(tp) -> str:
    plain = isinstance(tp, type) and not typing.get_args(tp)
    return tp.__name__ if plain else str(tp).replace("typing.", "")


def _convert(value, tp):
    """``value`` as type ``tp``, or :class:`_Mismatch`."""
    if tp is typing.Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None or (type(None) in args and isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
            raise _Mismatch
        exact = [m for m in members if isinstance(value, typing.get_origin(m) or m)]
        for member in exact + [m for m in members if m not in exact]:
            try:
                return _convert(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    if value is None:
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        number = _convert(value, float)  # 5e2 or "5e2": a whole number written as a float
        if number.is_integer():
            return int(number)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        container = origin or tp
        if not args:
            return container(value)
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_convert(v, a) for v, a in zip(value, args))
        return container(_convert(v, args[0]) for v in value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        if not args:
            return dict(value)
        return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation this reader does not know: left as it is


def coerce_settings(config) -> None:
    """Convert every field of the dataclass instance ``config`` to its declared type, in place; a value that does
    not convert is a ``ValueError`` naming the config, the setting and the value."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        try:
            setattr(config, f.name, _convert(value, hints.get(f.name, typing.Any)))
        except _Mismatch:
            want = _type_name(hints[f.name])
            raise ValueError(
                f"{type(config).__name__}: setting {f.name} must be of type {want}, got {value!r} "
                f"({type(value).__name__})"
            ) from None


def config_from_yaml(cls, path: str | os.PathLike, overrides: dict | None = None):
    """``cls(**settings)`` from a YAML mapping updated by ``overrides``; unknown keys are an error naming them, and
    values are converted to their field's type by ``cls.__post_init__`` (:func:`coerce_settings`)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    raw.update(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ValueError(f"{path}: missing required setting(s) {', '.join(missing)}")
    return cls(**raw)

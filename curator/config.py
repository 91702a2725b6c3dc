"""Build frozen config dataclasses from plain dicts, reporting every problem at once.

Used by recipes (YAML) and anything else that takes structured settings. The dataclasses
themselves stay plain: a field's type annotation says what is accepted, its ``metadata["help"]``
says what it means, and its ``__post_init__`` checks cross-field rules.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from curator.errors import ConfigError, did_you_mean


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check/convert one value against a type annotation; append problems instead of raising."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        hint = did_you_mean(str(value), [str(a) for a in get_args(tp)], parens=True)
        problems.append(f"{where}: {value!r} is not one of {_type_name(tp)}{hint}")
        return None
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            problems.append(f"{where}: must be {_type_name(tp)}, got null")
            return None
        # try each member; keep the first that converts without problems
        for a in args:
            if a is type(None):
                continue
            trial: list[str] = []
            out = _convert(value, a, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: must be {_type_name(tp)}, got {value!r}")
        return None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{where}: must be a mapping of {tp.__name__} fields, got {value!r}")
            return None
        return _build(tp, value, where, problems)
    if origin in (list, tuple):
        item_args = [a for a in get_args(tp) if a is not Ellipsis]
        # a single scalar is accepted where a list of them is expected
        seq = list(value) if isinstance(value, (list, tuple)) else [value]
        item_t = item_args[0] if item_args else Any
        items = [_convert(v, item_t, f"{where}[{i}]", problems) for i, v in enumerate(seq)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: must be a mapping, got {value!r}")
            return None
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: must be true or false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{where}: must be an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-4" as a string
            except ValueError:
                pass
        problems.append(f"{where}: must be a number, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{where}: must be a string, got {value!r}")
        return None
    return value


def _build(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            hint = did_you_mean(str(key), fields) or f" Valid keys: {', '.join(fields)}"
            problems.append(f"{where}.{key}: unknown key.{hint}".lstrip("."))
            continue
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}".lstrip("."), problems)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for n in missing:
        problems.append(f"{where}.{n}: required".lstrip("."))
    if len(problems) and any(p.startswith(where) for p in problems):
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        prefix = f"{where}: " if where else ""
        problems.extend(p if p.startswith(where) else prefix + p for p in e.problems)
    except (TypeError, ValueError) as e:
        problems.append(f"{where}: {e}")
    return None


def check_value(value: Any, tp: Any, where: str) -> tuple[Any, list[str]]:
    """Check/convert one value against a type annotation, as recipe fields are: (value, problems)."""
    problems: list[str] = []
    out = _convert(value, tp, where, problems)
    return (value if problems else out), problems


def from_dict(cls: type, data: dict, source: str | None = None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; raise one ConfigError listing every problem."""
    problems: list[str] = []
    out = _build(cls, data or {}, prefix, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return out


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list/scalars (for YAML/JSON and MLflow params)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field: the reference docs are generated from this."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = to_dict(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows

"""YAML -> typed dataclass configs with dotted CLI overrides (``train.lr=3e-4``).

Used by both commands; every run writes its resolved config with :func:`dump_config`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from disse.schemas.errors import SchemaError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"expected a mapping, got {value!r}", file=source, field=where)
        return _build(tp, value, where, source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, source)
            except SchemaError:
                continue
        raise SchemaError(f"{value!r} does not fit {tp}", file=source, field=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected a list, got {value!r}", file=source, field=where)
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, where, source) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"expected a mapping, got {value!r}", file=source, field=where)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SchemaError(f"expected true/false, got {value!r}", file=source, field=where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML follows YAML 1.1, where `3e-4` (no dot) is a string, not a float.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise SchemaError(f"expected {getattr(tp, '__name__', tp)}, got {value!r}", file=source, field=where)


def _build(cls: type[T], data: dict, prefix: str, source: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        where = f"{prefix}.{sorted(unknown)[0]}" if prefix else sorted(unknown)[0]
        raise SchemaError(f"unknown option; known here: {sorted(names)}", file=source, field=where)
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], where, source)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SchemaError(str(exc), file=source, field=prefix or None) from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise SchemaError(f"cannot override inside non-mapping '{k}'", field=dotted)
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise SchemaError(f"override must look like key.sub=value, got {item!r}", field=item)
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return out


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a YAML file (or defaults) and dotted overrides, checking names and types."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise SchemaError("config file not found", file=source)
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise SchemaError(f"invalid YAML: {exc}", file=source) from None
        if not isinstance(data, dict):
            raise SchemaError("top level must be a mapping", file=source)
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    return _build(cls, data, "", source if not overrides else f"{source} + CLI overrides")


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (next to a run's outputs)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)

"""YAML -> typed dataclass configs with dotted CLI overrides (``train.lr=3e-4``).

Used by both commands; every run writes its resolved config with :func:`dump_config`.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

import yaml

from disse.schemas.errors import SchemaError

T = TypeVar("T")


class ConfigSources:
    """Which input set each field of a loaded config: ``sources("data.batch_size")`` is
    ``"override 'data.batch_size=0'"`` when a command-line override set that field (or a section above
    it; the last one wins, as when loading), the file's name when the file set it, else
    ``"built-in default"``. Errors name it as their ``file``, so a bad value typed on the command line is
    not blamed on the YAML file."""

    def __init__(self, file: str | None = None, data: dict | None = None,
                 overrides: list[tuple[str, str]] | tuple = ()) -> None:
        self.file = file
        self._data = data or {}
        self.overrides = list(overrides)  # (dotted key, the override as typed)

    def override_for(self, field: str) -> str | None:
        """The override (as typed) that set ``field`` or a section above it, if any."""
        for key, item in reversed(self.overrides):
            if field == key or field.startswith(key + "."):
                return item
        return None

    def file_sets(self, field: str) -> bool:
        node: Any = self._data
        for k in field.split("."):
            if not isinstance(node, dict) or k not in node:
                return False
            node = node[k]
        return True

    def __call__(self, field: str | None) -> str:
        if not field:
            return self.file if self.file is not None else "defaults"
        item = self.override_for(field)
        if item is not None:
            return f"override {item!r}"
        if self.file is not None and self.file_sets(field):
            return self.file
        below = [it for key, it in self.overrides if key.startswith(field + ".")]
        if below:  # a section-level error (e.g. a missing argument) from an override inside it
            return f"override {below[-1]!r}"
        return "built-in default"


Source = Union[str, Callable[[str], str]]


def _src(source: Source, where: str | None) -> str:
    """The ``file`` an error at ``where`` names: a fixed string, or what a :class:`ConfigSources` says."""
    return source if isinstance(source, str) else source(where)


def _coerce(value: Any, tp: Any, where: str, source: Source) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"expected a mapping, got {value!r}", file=_src(source, where), field=where)
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
        raise SchemaError(f"{value!r} does not fit {tp}", file=_src(source, where), field=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected a list, got {value!r}", file=_src(source, where), field=where)
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, where, source) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"expected a mapping, got {value!r}", file=_src(source, where), field=where)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SchemaError(f"expected true/false, got {value!r}", file=_src(source, where), field=where)
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
    raise SchemaError(f"expected {getattr(tp, '__name__', tp)}, got {value!r}", file=_src(source, where), field=where)


def _build(cls: type[T], data: dict, prefix: str, source: Source) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        where = f"{prefix}.{sorted(unknown)[0]}" if prefix else sorted(unknown)[0]
        close = difflib.get_close_matches(sorted(unknown)[0], sorted(names), n=1)
        hint = f"did you mean '{f'{prefix}.' if prefix else ''}{close[0]}'? " if close else ""
        raise SchemaError(f"unknown option; {hint}known here: {sorted(names)}", file=_src(source, where),
                          field=where)
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], where, source)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SchemaError(str(exc), file=_src(source, prefix or None), field=prefix or None) from None


def _set_dotted(data: dict, dotted: str, value: Any, item: str | None = None) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise SchemaError(f"cannot override inside non-mapping '{k}'",
                              file=f"override {item!r}" if item else None, field=dotted)
    node[keys[-1]] = value


def _parse_override(item: str, parse_value: Callable[[str], Any] | None = None) -> tuple[str, Any]:
    if "=" not in item:
        raise SchemaError(f"override must look like section.field=value, got {item!r}", field=item)
    key, raw = item.split("=", 1)
    key = key.strip()
    if not raw.strip():
        return key, ""
    try:
        return key, (parse_value or yaml.safe_load)(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SchemaError(f"the value is not valid YAML ({problem}); check its brackets and quotes, "
                          f"e.g. {key}=[a, b]", file=f"override {item!r}", field=key) from None


def parse_overrides(overrides: list[str] | tuple[str, ...],
                    parse_value: Callable[[str], Any] | None = None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` (values parsed as YAML, or by
    ``parse_value``)."""
    return [_parse_override(item, parse_value) for item in overrides]


def load_config_sources(cls: type[T], path: str | Path | None = None,
                        overrides: list[str] | tuple[str, ...] = (), *,
                        parse_value: Callable[[str], Any] | None = None) -> tuple[T, ConfigSources]:
    """:func:`load_config`, also returning the :class:`ConfigSources` of the result (which errors name)."""
    data: dict = {}
    file = None
    if path is not None:
        file = str(path)
        if not Path(path).is_file():
            raise SchemaError("config file not found", file=file)
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise SchemaError(f"invalid YAML: {exc}", file=file) from None
        if not isinstance(data, dict):
            raise SchemaError("top level must be a mapping", file=file)
    parsed = [(item, *_parse_override(item, parse_value)) for item in overrides]
    sources = ConfigSources(file, copy.deepcopy(data), [(key, item) for item, key, _ in parsed])
    for item, key, value in parsed:
        _set_dotted(data, key, value, item)
    return _build(cls, data, "", sources), sources


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), *,
                parse_value: Callable[[str], Any] | None = None) -> T:
    """Build ``cls`` from a YAML file (or defaults) and dotted overrides, checking names and types.

    An error names where the bad value came from: ``override 'a.b=1'`` for a command-line override,
    the file for a value the file set (:class:`ConfigSources`)."""
    return load_config_sources(cls, path, overrides, parse_value=parse_value)[0]


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (next to a run's outputs)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)

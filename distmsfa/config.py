"""Typed, frozen configuration dataclasses.

Every config in distmsfa is a frozen dataclass that subclasses :class:`Config`.
Values are checked in ``__post_init__`` (raise :class:`ConfigError` with a
message that says how to fix the value). YAML/JSON only appears at the edge:
``Config.from_dict`` refuses unknown keys and suggests the closest known one.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T", bound="Config")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: ``from_dict`` / ``to_dict`` / ``replace`` / ``from_yaml``."""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [k for k in data if k not in fields]
        if unknown:
            msgs = []
            for k in unknown:
                close = difflib.get_close_matches(k, list(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                msgs.append(f"{k!r}{hint}")
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {', '.join(msgs)}; "
                f"known keys: {', '.join(sorted(fields))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in data.items():
            kwargs[k] = _coerce(hints.get(k), v)
            if hints.get(k) in (float, int) and isinstance(kwargs[k], (str, list, dict)):
                raise ConfigError(f"{cls.__name__}: {k} must be a number, got {v!r}")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
        data = load_yaml(path) or {}
        if section is not None:
            data = data.get(section, {}) if isinstance(data, Mapping) else data
        if not isinstance(data, Mapping):
            where = f"section {section!r} of " if section else ""
            raise ConfigError(f"{where}{Path(path).name}: expected a mapping of {cls.__name__} keys, "
                              f"got a {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a one-line ConfigError."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {p.name}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {p.name}: YAML syntax error{where}: {problem}") from None


def _number(hint: type, value: str) -> Any:
    """A numeric string where a number is expected: YAML 1.1 reads ``1e-3`` (no dot) as a
    string, so ``lr: 1e-3`` must still mean 0.001."""
    try:
        num = float(value.strip())
    except ValueError:
        return value  # left for the config's own check, which names the key
    if hint is int:
        return int(num) if num.is_integer() else value
    return num


def _coerce(hint: Any, value: Any) -> Any:
    """Turn YAML lists into tuples, dicts into nested configs, numeric strings into numbers."""
    if hint is None:
        return value
    if hint in (float, int) and isinstance(value, str):
        return _number(hint, value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, Mapping):
        return hint.from_dict(value)
    if origin is typing.Union or str(origin) == "types.UnionType":
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value)
            except Exception:  # noqa: BLE001 - try the next member of the union
                continue
        return value
    if origin is tuple and isinstance(value, list):
        items = args[:-1] if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) == len(value) or (len(args) == 2 and args[1] is Ellipsis):
            types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(items)
            return tuple(_number(t, v) if t in (float, int) and isinstance(v, str) else v for t, v in zip(types, value))
        return tuple(value)
    return value


def require(cond: bool, cls_name: str, message: str) -> None:
    """Raise ConfigError(``f"{cls_name}: {message}"``) unless ``cond``."""
    if not cond:
        raise ConfigError(f"{cls_name}: {message}")

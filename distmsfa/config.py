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
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
        import yaml

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if section is not None:
            data = data.get(section, {})
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


def _coerce(hint: Any, value: Any) -> Any:
    """Turn YAML lists into tuples and dicts into nested configs."""
    if hint is None:
        return value
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
        return tuple(value)
    return value


def require(cond: bool, cls_name: str, message: str) -> None:
    """Raise ConfigError(``f"{cls_name}: {message}"``) unless ``cond``."""
    if not cond:
        raise ConfigError(f"{cls_name}: {message}")

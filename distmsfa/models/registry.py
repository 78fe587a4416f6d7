"""One model registry, as timm does: ``create_model(name, **cfg)`` and ``list_models()``.

A model module registers its factory with ``@register_model("name")``.  The factory
takes keyword config values and returns a :class:`distmsfa.models.base.MultiSequenceModel`.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

_REGISTRY: dict[str, Callable[..., Any]] = {}
_LOADED = False


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    # Importing the zoo registers every model; done lazily so `import distmsfa` stays light.
    global _LOADED
    if not _LOADED:
        import distmsfa.models.zoo  # noqa: F401

        _LOADED = True


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def create_model(name: str, **cfg: Any):
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (see `distmsfa models` / list_models())")
    return _REGISTRY[name](**cfg)

"""The search space of a study (core: no Ray).

A study file's ``search:`` section maps a config key to a distribution::

    search:
      train.lr:           {loguniform: [1.0e-5, 1.0e-2]}
      train.batch_size:   {choice: [4, 6, 8]}
      model.attn_heads:   {choice: [1, 2, 4]}
      model.dropout:      {uniform: [0.0, 0.5]}
      augment.rotate_deg: {int: [0, 20]}           # {int: [lo, hi], log: true} for a log scale

Keys: ``train.<TrainConfig field>``, ``model.<the model's config field>`` (and
``model.preset``), ``augment.<AugmentConfig field>``.  :func:`parse_space` checks every
entry before anything starts and raises :class:`~distmsfa.config.ConfigError` with one line
naming the key and the fix.  A *point* is a flat ``{key: value}`` dict;
:func:`apply_point` writes it into the ``train:`` section of a config mapping.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from distmsfa.config import Config, ConfigError

KINDS = ("loguniform", "uniform", "int", "choice")
PREFIXES = ("train", "model", "augment")
# Fields of TrainConfig that are sections of their own (model_cfg, augment) or not searchable.
_NOT_SEARCHABLE = {"model", "model_cfg", "augment"}


@dataclass(frozen=True)
class Dist:
    """One search dimension.  ``low``/``high`` for the numeric kinds, ``choices`` for choice."""

    key: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def to_optuna(self):
        import optuna.distributions as od

        if self.kind == "loguniform":
            return od.FloatDistribution(self.low, self.high, log=True)
        if self.kind == "uniform":
            return od.FloatDistribution(self.low, self.high)
        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log)
        return od.CategoricalDistribution([encode_choice(c) for c in self.choices])

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        return f"{self.kind}{' (log)' if self.log and self.kind == 'int' else ''} [{self.low:g}, {self.high:g}]"


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values must be scalars: lists (e.g. ``kv_pool``) travel as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return "json:" + json.dumps(value)


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


def _same(a: Any, b: Any) -> bool:
    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return norm(a) == norm(b)
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# --- the searchable keys and their types -------------------------------------------------

def model_config_class(model: str) -> type[Config]:
    """The config dataclass a registered model's factory builds (found in the factory's module)."""
    import importlib

    from distmsfa.models import registry

    registry._load_all()
    if model not in registry._REGISTRY:
        registry.create_model(model)  # raises the registry's "did you mean" error
    mod = importlib.import_module(registry._REGISTRY[model].__module__)
    classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
               if issubclass(c, Config) and c is not Config and c.__module__ == mod.__name__]
    if len(classes) != 1:
        raise ConfigError(f"cannot tell the config class of model {model!r} (module {mod.__name__})")
    return classes[0]


def searchable_fields(model: str) -> dict[str, Any]:
    """``{"train.lr": <type hint>, "model.attn_dim": ..., "augment.flip_prob": ...}``."""
    from distmsfa.training.config import AugmentConfig, TrainConfig

    out: dict[str, Any] = {}
    for prefix, cls in (("train", TrainConfig), ("model", model_config_class(model)), ("augment", AugmentConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if prefix == "train" and f.name in _NOT_SEARCHABLE:
                continue
            out[f"{prefix}.{f.name}"] = hints[f.name]
    out["model.preset"] = str
    return out


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (from YAML) has the type of a config field's hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union or str(origin) == "types.UnionType":
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(args[0], v) for v in value)
        if origin is tuple and args:
            return len(args) == len(value) and all(_accepts(a, v) for a, v in zip(args, value))
        return True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# --- parsing -------------------------------------------------------------------------------

def parse_space(search: Mapping[str, Any] | None, model: str, where: str = "search") -> dict[str, Dist]:
    """Check a ``search:`` section against the model's fields; return ``{key: Dist}``."""
    if not search:
        raise ConfigError(f"{where}: empty; give at least one key, e.g. train.lr: {{loguniform: [1.0e-5, 1.0e-3]}}")
    if not isinstance(search, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config key -> distribution")
    fields = searchable_fields(model)
    space: dict[str, Dist] = {}
    for key, spec in search.items():
        space[key] = _parse_one(str(key), spec, fields, model, where)
    return space


def _parse_one(key: str, spec: Any, fields: Mapping[str, Any], model: str, where: str) -> Dist:
    at = f"{where}.{key}"
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if key.split(".", 1)[0] not in PREFIXES or "." not in key:
            raise ConfigError(f"{at}: unknown key{hint}; keys are train.<field>, model.<field> or augment.<field>")
        raise ConfigError(f"{at}: unknown key for model {model!r}{hint}")
    if not isinstance(spec, Mapping) or len(spec) != 1 + ("log" in spec):
        raise ConfigError(f"{at}: give one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-3]}}; kinds: {', '.join(KINDS)}")
    kind = next(k for k in spec if k != "log")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{at}: unknown distribution {kind!r}{hint}; use one of {', '.join(KINDS)}")
    hint_t = fields[key]
    arg = spec[kind]
    if kind == "choice":
        if not isinstance(arg, (list, tuple)) or len(arg) == 0:
            raise ConfigError(f"{at}: choice needs a non-empty list of values, e.g. {{choice: [4, 6]}}")
        for v in arg:
            if not _accepts(hint_t, v):
                raise ConfigError(f"{at}: choice value {v!r} is not a {_type_name(hint_t)} (the type of {key})")
        _check_values(key, list(arg), at)
        return Dist(key, kind, choices=tuple(tuple(v) if isinstance(v, list) else v for v in arg))
    if not isinstance(arg, (list, tuple)) or len(arg) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in arg):
        raise ConfigError(f"{at}: {kind} needs [low, high] numbers, e.g. {{{kind}: [1, 10]}}")
    low, high = arg
    if not low < high:
        raise ConfigError(f"{at}: low ({low}) must be < high ({high}); for a fixed value set it in train:/model_cfg instead")
    log = bool(spec.get("log", kind == "loguniform"))
    if (kind == "loguniform" or log) and low <= 0:
        raise ConfigError(f"{at}: {kind}{' with log' if kind == 'int' else ''} needs bounds > 0 (got low={low}); "
                          f"use uniform for a range that includes 0")
    if kind == "int":
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{at}: int needs integer bounds (got [{low}, {high}])")
        if not _accepts(hint_t, 1):
            raise ConfigError(f"{at}: int values do not fit {key} (a {_type_name(hint_t)}); use choice")
        low, high = int(low), int(high)
    elif not _accepts(hint_t, 0.5):
        raise ConfigError(f"{at}: {kind} draws real numbers but {key} is a {_type_name(hint_t)}; "
                          f"use {'int' if _accepts(hint_t, 1) else 'choice'}")
    _check_values(key, [low, high], at)
    return Dist(key, kind, low=low, high=high, log=log)


def _check_values(key: str, values: Sequence[Any], at: str) -> None:
    """A value the target config refuses on its own (lr <= 0, dropout 1.5) is an error now.
    Model keys are checked per trial instead: their limits can depend on each other
    (attn_dim % attn_heads), so one value alone proves nothing."""
    from distmsfa.training.config import AugmentConfig, TrainConfig

    prefix, name = key.split(".", 1)
    cls = {"train": TrainConfig, "augment": AugmentConfig}.get(prefix)
    if cls is None:
        return
    for v in values:
        try:
            cls.from_dict({name: list(v) if isinstance(v, tuple) else v})
        except ConfigError as exc:
            raise ConfigError(f"{at}: value {v!r} refused: {str(exc).split(': ', 1)[-1]}") from None


def check_points(points: Sequence[Mapping[str, Any]] | None, space: Mapping[str, Dist], where: str = "tune.points_to_evaluate") -> list[dict[str, Any]]:
    """``points_to_evaluate``: each a mapping of search keys to values inside the space.
    Keys the point leaves out are drawn by the searcher."""
    out = []
    for i, p in enumerate(points or []):
        if not isinstance(p, Mapping):
            raise ConfigError(f"{where}[{i}]: expected a mapping of search keys to values")
        for k, v in p.items():
            if k not in space:
                close = difflib.get_close_matches(str(k), list(space), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}[{i}]: {k!r} is not a key of search:{hint}")
            if not space[k].contains(v):
                raise ConfigError(f"{where}[{i}]: {k}={v!r} is outside its distribution ({space[k].describe()})")
        out.append({k: encode_choice(v) for k, v in p.items()})
    return out


def apply_point(data: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """Write a flat point into a ``{'train': {...}, 'cv': {...}}`` mapping (copied)."""
    import copy

    out = copy.deepcopy(dict(data))
    train = out.setdefault("train", {})
    for key, value in point.items():
        value = decode_choice(value)
        if isinstance(value, tuple):
            value = list(value)
        prefix, name = key.split(".", 1)
        if prefix == "train":
            train[name] = value
        elif prefix == "model":
            train["model_cfg"] = {**(train.get("model_cfg") or {}), name: value}
        elif prefix == "augment":
            train["augment"] = {**(train.get("augment") or {}), name: value}
        else:  # parse_space refuses other prefixes
            raise ConfigError(f"search key {key!r}: unknown prefix {prefix!r}")
    return out

"""Study settings and the study file (core: no Ray).

A study file (``tune_configs/quickstart.yaml``, ``tune_configs/paper.yaml``, ``--config
FILE``) has four sections: ``train:`` and ``cv:`` (the base configuration every trial
starts from, as ``distmsfa cv`` reads them), ``search:`` (see :mod:`distmsfa.hpo.space`)
and ``tune:`` (:class:`TuneSettings`).  :func:`load_study` merges it over a profile,
checks everything and returns a :class:`Study`; nothing starts before that succeeded.

The objective (docs/tuning.md, "What ranks the trials"): every epoch a trial reports the
fold-mean validation AUC of that epoch (``cv_auc``), and ``objective``, which ranks the
trials for ASHA, Optuna and ``best.yaml``: by default the mean of ``cv_auc`` over the
last ``smooth_window`` epochs.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from distmsfa.config import Config, ConfigError, require
from distmsfa.hpo.space import Dist, check_points, parse_space

SCHEDULERS = ("asha", "none")
RANK_BY = ("smoothed", "last", "best")
PRUNED_AS = ("pruned", "complete")
OBJECTIVE = "objective"
STUDY_SECTIONS = ("train", "cv", "search", "tune")


@dataclass(frozen=True)
class TuneSettings(Config):
    """The ``tune:`` section.

    ``num_samples``: trials in the study.  ``max_concurrent_trials``: None = as many as
    the cluster holds (trials x (trial CPU + folds x fold resources) <= cluster; see
    :func:`default_concurrency`).  ``scheduler``: ``asha`` (stops a trial whose objective
    is in the bottom of its rung) or ``none``.  ``grace_period`` / ``reduction_factor`` /
    ``max_t``: ASHA's, in epochs (``max_t`` None = ``train.epochs``).  ``seed``: the TPE
    sampler's.  ``points_to_evaluate``: trials to run first (the paper's defaults in
    paper.yaml).  ``rank_by``: which value ranks trials: ``smoothed`` (mean fold-mean val
    AUC over the last ``smooth_window`` epochs), ``last`` (the last epoch's) or ``best``
    (the best epoch's: optimistic).  ``pruned_as``: how an ASHA-stopped trial reaches
    Optuna: ``pruned`` (TrialState.PRUNED with its per-epoch values: TPE ranks it below
    every finished trial) or ``complete`` (Ray's default: COMPLETE with its early value).
    ``trial_cpus``: CPUs of the trial actor (never a GPU: the folds' workers hold those)."""

    num_samples: int = 8
    max_concurrent_trials: Optional[int] = None
    scheduler: str = "asha"
    grace_period: int = 5
    reduction_factor: int = 2
    max_t: Optional[int] = None
    seed: int = 0
    points_to_evaluate: tuple = ()
    rank_by: str = "smoothed"
    smooth_window: int = 3
    pruned_as: str = "pruned"
    trial_cpus: float = 1.0

    def __post_init__(self) -> None:
        n = "tune"
        require(isinstance(self.num_samples, int) and self.num_samples >= 1, n, f"num_samples={self.num_samples!r} must be an integer >= 1")
        require(self.max_concurrent_trials is None or (isinstance(self.max_concurrent_trials, int) and self.max_concurrent_trials >= 1),
                n, f"max_concurrent_trials={self.max_concurrent_trials!r} must be an integer >= 1 or null (= what the cluster holds)")
        require(self.scheduler in SCHEDULERS, n, f"scheduler={self.scheduler!r}; use one of {SCHEDULERS}")
        require(isinstance(self.grace_period, int) and self.grace_period >= 1, n, f"grace_period={self.grace_period!r} must be an integer >= 1 (epochs)")
        require(isinstance(self.reduction_factor, int) and self.reduction_factor >= 2, n, f"reduction_factor={self.reduction_factor!r} must be an integer >= 2")
        require(self.max_t is None or (isinstance(self.max_t, int) and self.max_t >= 1), n, f"max_t={self.max_t!r} must be an integer >= 1 or null (= train.epochs)")
        require(isinstance(self.seed, int), n, f"seed={self.seed!r} must be an integer")
        require(self.rank_by in RANK_BY, n, f"rank_by={self.rank_by!r}; use one of {RANK_BY}")
        require(isinstance(self.smooth_window, int) and self.smooth_window >= 1, n, f"smooth_window={self.smooth_window!r} must be an integer >= 1")
        require(self.pruned_as in PRUNED_AS, n, f"pruned_as={self.pruned_as!r}; use one of {PRUNED_AS}")
        require(isinstance(self.trial_cpus, (int, float)) and 0 < self.trial_cpus <= 8, n, f"trial_cpus={self.trial_cpus!r} must be in (0, 8]")
        require(isinstance(self.points_to_evaluate, (tuple, list)), n, "points_to_evaluate must be a list of mappings")


@dataclass(frozen=True)
class Study:
    """Everything a study needs, checked: base config sections, search space, settings."""

    model: str
    base: dict[str, Any]  # {'train': {...}, 'cv': {...}} (profile <- file <- overrides)
    space: dict[str, Dist]
    settings: TuneSettings
    points: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def epochs(self) -> int:
        return int(self.base["train"]["epochs"])

    @property
    def max_t(self) -> int:
        return self.epochs  # tune.max_t is null or train.epochs (checked in load_study)

    def to_dict(self) -> dict[str, Any]:
        """The resolved study file (written to ``STUDY/study.yaml``)."""
        search = {}
        for k, d in self.space.items():
            if d.kind == "choice":
                search[k] = {"choice": [list(c) if isinstance(c, tuple) else c for c in d.choices]}
            else:
                search[k] = {d.kind: [d.low, d.high], **({"log": True} if d.kind == "int" and d.log else {})}
        tune = self.settings.to_dict()
        tune["points_to_evaluate"] = [dict(p) for p in self.settings.points_to_evaluate]
        train = dict(self.base["train"], model=self.model)
        return {"train": train, "cv": dict(self.base["cv"]), "search": search, "tune": tune}


def load_study_data(config: str | Path | Mapping[str, Any] | None, profile: Optional[str] = None) -> dict[str, Any]:
    """A study file (path, or the name of an embedded profile such as ``quickstart``) as a
    mapping of its four sections, merged over ``profile`` (train/cv only)."""
    import yaml

    from distmsfa.training.profiles import PROFILES, get_profile, merge

    if config is None:
        config = "quickstart"
    if isinstance(config, Mapping):
        data, where = dict(config), "config"
    elif not Path(str(config)).is_file() and str(config) in PROFILES:
        data, where = get_profile(str(config)), f"profile {config}"
    else:
        p = Path(config)
        if not p.is_file():
            raise ConfigError(f"study file {p} not found (or give an embedded profile: {', '.join(PROFILES)})")
        with open(p, encoding="utf-8") as fh:
            data, where = yaml.safe_load(fh) or {}, str(p)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with sections {STUDY_SECTIONS}")
    unknown = [k for k in data if k not in STUDY_SECTIONS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), STUDY_SECTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown section {unknown[0]!r}{hint}; use {', '.join(STUDY_SECTIONS)}")
    out = {k: dict(data.get(k) or {}) for k in STUDY_SECTIONS}
    if profile:
        base = get_profile(profile)
        out = {**out, **merge({"train": base["train"], "cv": base["cv"]}, {"train": out["train"], "cv": out["cv"]})}
    out["_where"] = where
    return out


def load_study(config: str | Path | Mapping[str, Any] | None = None, *, model: Optional[str] = None,
               profile: Optional[str] = None, overrides: Mapping[str, Any] | None = None) -> Study:
    """Load and check a study: unknown sections/keys, bad distributions, bad settings and
    points outside the space all raise :class:`ConfigError` (one line, key and fix).

    ``overrides``: ``{'train': {...}, 'cv': {...}, 'tune': {...}}`` applied over the file."""
    from distmsfa.training.config import CVConfig, TrainConfig
    from distmsfa.training.profiles import merge

    data = load_study_data(config, profile)
    where = data.pop("_where")
    if overrides:
        for sec, vals in overrides.items():
            if sec not in STUDY_SECTIONS:
                raise ConfigError(f"override section {sec!r}: use one of {STUDY_SECTIONS}")
            if sec in ("train", "cv"):
                data.update(merge({"train": data["train"], "cv": data["cv"]}, {sec: vals}))
            else:
                data[sec] = {**data[sec], **dict(vals)}
    model = model or data["train"].get("model") or "msfanet"
    data["train"]["model"] = model
    # the base configuration must be valid on its own
    tcfg = TrainConfig.from_dict(data["train"])
    CVConfig.from_dict(data["cv"])
    from distmsfa.models import registry

    if model not in registry.list_models():
        try:
            registry.create_model(model)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
    space = parse_space(data["search"], model, where=f"{where}: search")
    tune = dict(data["tune"])
    points = tune.get("points_to_evaluate") or []
    try:
        settings = TuneSettings.from_dict({**tune, "points_to_evaluate": tuple(dict(p) if isinstance(p, Mapping) else p for p in points)})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    checked = check_points(list(settings.points_to_evaluate), space, where=f"{where}: tune.points_to_evaluate")
    if settings.max_t is not None and settings.max_t != tcfg.epochs:
        raise ConfigError(f"{where}: tune.max_t ({settings.max_t}) must equal train.epochs ({tcfg.epochs}) or be null: "
                          f"ASHA stops every trial at max_t, which would cut each CV short; change train.epochs instead")
    if settings.scheduler == "asha" and settings.grace_period > tcfg.epochs:
        raise ConfigError(f"{where}: tune.grace_period ({settings.grace_period}) exceeds train.epochs ({tcfg.epochs}); lower it")
    if len(checked) > settings.num_samples:
        raise ConfigError(f"{where}: {len(checked)} points_to_evaluate but num_samples is {settings.num_samples}; raise num_samples")
    # fully resolved: best.yaml and each trial's config.yaml then mean the same under any profile
    base = {"train": tcfg.to_dict(), "cv": CVConfig.from_dict(data["cv"]).to_dict()}
    return Study(model=model, base=base, space=space, settings=settings, points=checked, source=where)


# --- resources -----------------------------------------------------------------------------

def trial_footprint(n_folds: int, cv: Mapping[str, Any], trial_cpus: float, use_gpu: bool) -> dict[str, float]:
    """What one running trial holds: its actor's CPU plus each fold's workers (``workers_per_fold``
    DDP ranks) and loading share."""
    from distmsfa.training.config import CVConfig

    c = CVConfig.from_dict(cv)
    res = {"CPU": trial_cpus + n_folds * (c.cpus_per_fold * c.workers_per_fold + c.data_cpus)}
    if use_gpu:
        res["GPU"] = n_folds * c.gpus_per_fold * c.workers_per_fold
    return res


def default_concurrency(cluster: Mapping[str, float], footprint: Mapping[str, float]) -> int:
    """Trials that fit the cluster at once, so no trial's folds wait on another trial's
    (trials x folds x GPUs per fold <= GPUs; the same with CPUs).  At least 1."""
    fits = [cluster.get(k, 0.0) / v for k, v in footprint.items() if v > 0]
    return max(1, int(math.floor(min(fits) + 1e-9))) if fits else 1


# --- the objective -------------------------------------------------------------------------

def objective_value(curve: Sequence[float], rank_by: str, window: int) -> float:
    """The ranking value of a trial after ``len(curve)`` epochs of fold-mean val AUC.

    NaN epochs (a fold without both classes) are skipped; NaN when none is defined."""
    vals = [v for v in curve if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan")
    if rank_by == "last":
        return float(vals[-1])
    if rank_by == "best":
        return float(max(vals))
    tail = vals[-window:]
    return float(sum(tail) / len(tail))


def fold_names(folds: Sequence[int]) -> list[str]:
    return [f"fold{f}_auc" for f in folds]


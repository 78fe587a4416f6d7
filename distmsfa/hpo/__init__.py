"""Hyperparameter search: ``distmsfa tune`` (Ray Tune + Optuna over k-fold CV trials).

Core (no Ray): :mod:`~distmsfa.hpo.space` (search space, validation), :mod:`~distmsfa.hpo.study`
(study file, settings, objective), :mod:`~distmsfa.hpo.results` (trials table, plots,
best.yaml).  Ray adapters: :mod:`~distmsfa.hpo.ray_tune` (trial function, searcher, Tuner),
:mod:`~distmsfa.hpo.live` (live table).  Entry point: :func:`tune_study` (docs/tuning.md).
"""
from __future__ import annotations

from distmsfa.hpo.space import Dist, apply_point, parse_space
from distmsfa.hpo.study import Study, TuneSettings, load_study, objective_value

__all__ = ["Dist", "Study", "TuneSettings", "apply_point", "load_study", "objective_value", "parse_space",
           "tune_study", "run_main_job"]


def __getattr__(name: str):
    # Ray-touching entry points load lazily: `import distmsfa.hpo` stays light.
    if name == "tune_study":
        from distmsfa.hpo.runner import tune_study

        return tune_study
    if name == "run_main_job":
        from distmsfa.hpo.main_job import run_main_job

        return run_main_job
    raise AttributeError(name)

"""Training and k-fold cross-validation (docs/training.md).

Public API (imported lazily, so ``import distmsfa.training`` stays light and Ray-free):

* ``TrainConfig``, ``AugmentConfig``, ``CVConfig`` - typed configs
* ``fit_fold``, ``train_epoch``, ``evaluate``, ``FoldResult`` - the Ray-free loop
* ``PlainSource``, ``epoch_plan`` - the plain batch source and the transport-independent order
* ``augment_batch`` - on-device batch augmentation
* ``run_cv``, ``CVResult``, ``CVMonitor``, ``resolve_configs`` - cross-validation (Ray or plain)
* ``PROFILES``, ``get_profile`` - the embedded ``cpu`` / ``paper`` profiles
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "distmsfa.training.config",
    "AugmentConfig": "distmsfa.training.config",
    "CVConfig": "distmsfa.training.config",
    "fit_fold": "distmsfa.training.loop",
    "train_epoch": "distmsfa.training.loop",
    "evaluate": "distmsfa.training.loop",
    "FoldResult": "distmsfa.training.loop",
    "PlainSource": "distmsfa.training.batches",
    "epoch_plan": "distmsfa.training.batches",
    "augment_batch": "distmsfa.training.augment",
    "run_cv": "distmsfa.training.cv",
    "CVResult": "distmsfa.training.cv",
    "CVMonitor": "distmsfa.training.cv",
    "CVError": "distmsfa.training.cv",
    "resolve_configs": "distmsfa.training.cv",
    "PROFILES": "distmsfa.training.profiles",
    "get_profile": "distmsfa.training.profiles",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distmsfa.training' has no attribute {name!r}")

"""Embedded run profiles (the same content as ``tune_configs/<name>.yaml``, kept equal by a
test), so the installed CLI finds them from any folder.  A profile or ``--config FILE``
has two sections: ``train:`` (:class:`~distmsfa.training.config.TrainConfig`) and
``cv:`` (:class:`~distmsfa.training.config.CVConfig`)."""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Mapping

from distmsfa.config import ConfigError

PROFILES: dict[str, dict[str, Any]] = {
    # CPU tests and the demo: the tiny model preset, small batches.  The crop size belongs
    # to the dataset (`distmsfa preprocess --crop ...`), not to this profile.  lr 1e-3
    # instead of the paper's 1e-4 and 40 epochs: on the demo cohort the tiny MSFANet is
    # still at chance after 4 epochs and reaches val AUC ~0.8 by epochs 30-40 (fold 0).
    # Tests override epochs.
    "cpu": {
        "train": {
            "model_cfg": {"preset": "tiny"},
            "epochs": 40,
            "batch_size": 4,
            "lr": 1.0e-3,
            "weight_decay": 1.0e-4,
            "precision": "fp32",
            "seed": 0,
            "threshold": "fixed",
        },
        "cv": {"cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 3, "materialize_val": True},
    },
    # The demo (`distmsfa demo`, the README's main job): the demo preset (sequences meet at
    # stride (2, 4, 4)) on the demo crop masked to the ROI (`roi_mask_mm`, set at preprocessing),
    # a cosine schedule with warm-up, stronger augmentation with in-plane translation, and the
    # last epoch's weights (honest, and no inner split taken from 72 training cases), and the
    # fixed in-plane T1 closing / FS opening ahead of MSFANet's shallow module (`morph: 3`:
    # +0.07 honest CV AUC over 3 seeds, docs/demo-learning.md).  Measured against the other
    # choices in docs/models.md ("Issue 15").
    "demo": {
        "train": {
            "model_cfg": {"preset": "demo", "morph": 3},
            "epochs": 40,
            "batch_size": 4,
            "lr": 1.0e-3,
            "weight_decay": 1.0e-4,
            "lr_schedule": "cosine",
            "warmup_epochs": 3,
            "selection": "last",
            "augment": {"translate": 0.1, "rotate_deg": 15.0, "scale": 0.15, "intensity_scale": 0.2,
                        "intensity_shift": 0.1},
            "precision": "fp32",
            "seed": 0,
            "threshold": "fixed",
        },
        "cv": {"cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 3, "materialize_val": True},
    },
    # The paper: Adam lr 1e-4, weight decay 1e-4, batch 6, 300 epochs, one GPU per fold.
    "paper": {
        "train": {
            "model_cfg": {},
            "epochs": 300,
            "batch_size": 6,
            "lr": 1.0e-4,
            "weight_decay": 1.0e-4,
            "precision": "auto",
            "seed": 0,
            "threshold": "fixed",
        },
        "cv": {"gpus_per_fold": 1.0, "cpus_per_fold": 2.0, "data_cpus": 0.25, "max_failures": 3,
               "materialize_val": True},
        # The study (distmsfa tune): the first trial is the paper's settings (docs/tuning.md).
        "search": {
            "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
            "train.weight_decay": {"loguniform": [1.0e-6, 1.0e-3]},
            "train.batch_size": {"choice": [4, 6, 8]},
            "model.attn_dim": {"choice": [32, 64, 128]},
            "model.attn_heads": {"choice": [1, 2, 4]},
            "model.kv_pool": {"choice": [[1, 1, 1], [1, 2, 2]]},
            "model.dropout": {"uniform": [0.0, 0.5]},
            "augment.rotate_deg": {"uniform": [0.0, 15.0]},
        },
        "tune": {
            "num_samples": 32, "max_concurrent_trials": None, "scheduler": "asha", "grace_period": 30,
            "reduction_factor": 3, "max_t": None, "seed": 0, "rank_by": "smoothed", "smooth_window": 5,
            "pruned_as": "pruned", "trial_cpus": 1.0,
            "points_to_evaluate": [
                {"train.lr": 1.0e-4, "train.weight_decay": 1.0e-4, "train.batch_size": 6, "model.attn_dim": 64,
                 "model.attn_heads": 1, "model.kv_pool": [1, 1, 1], "model.dropout": 0.0, "augment.rotate_deg": 10.0},
            ],
        },
    },
    # The quickstart study (`distmsfa tune` without --data): CPU, the synthetic cohort (crops
    # masked to the ROI), 4 trials x 2 folds x 40 epochs of the demo MSFANet with the demo
    # profile's training; ASHA may stop a trial after 10 epochs; the first trial is the demo
    # profile itself (docs/tuning.md).
    "quickstart": {
        "train": {
            "model_cfg": {"preset": "demo", "morph": 3},
            "epochs": 40,
            "batch_size": 4,
            "lr": 1.0e-3,
            "weight_decay": 1.0e-4,
            "lr_schedule": "cosine",
            "warmup_epochs": 3,
            "selection": "last",
            "augment": {"translate": 0.1, "rotate_deg": 15.0, "scale": 0.15, "intensity_scale": 0.2,
                        "intensity_shift": 0.1},
            "precision": "fp32",
            "seed": 0,
            "threshold": "fixed",
            "num_threads": 1,
        },
        "cv": {"folds": [0, 1], "cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 1, "materialize_val": True},
        "search": {
            "train.lr": {"loguniform": [3.0e-4, 3.0e-3]},
            "train.weight_decay": {"loguniform": [1.0e-5, 1.0e-2]},
            "model.dropout": {"uniform": [0.0, 0.5]},
            "augment.translate": {"uniform": [0.0, 0.15]},
        },
        "tune": {
            "num_samples": 4, "max_concurrent_trials": None, "scheduler": "asha", "grace_period": 10,
            "reduction_factor": 2, "max_t": None, "seed": 0, "rank_by": "smoothed", "smooth_window": 3,
            "pruned_as": "pruned", "trial_cpus": 0.5,
            "points_to_evaluate": [
                {"train.lr": 1.0e-3, "train.weight_decay": 1.0e-4, "model.dropout": 0.0, "augment.translate": 0.1},
            ],
        },
    },
}

SECTIONS = ("train", "cv")
# A study file (distmsfa tune) adds these; `distmsfa cv --config` reads such a file's train/cv.
STUDY_ONLY_SECTIONS = ("search", "tune")


def get_profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        close = difflib.get_close_matches(name, list(PROFILES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown profile {name!r}{hint}; choose one of {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])


def load_config_file(path: str | Path) -> dict[str, Any]:
    from distmsfa.config import load_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    data = load_yaml(p) or {}
    return check_sections(data, str(p))


def check_sections(data: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with sections {SECTIONS}")
    unknown = [k for k in data if k not in SECTIONS + STUDY_ONLY_SECTIONS]
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; use 'train:' and 'cv:' (a study file also 'search:', 'tune:')")
    for k in SECTIONS:
        if data.get(k) is not None and not isinstance(data[k], Mapping):
            raise ConfigError(f"{where}: section {k!r} must be a mapping of keys (like '{k}:' then indented "
                              f"'key: value' lines), got a {type(data[k]).__name__}")
    return {k: dict(data.get(k) or {}) for k in SECTIONS}


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Section-wise merge; ``model_cfg`` and ``augment`` mappings merge key by key."""
    out = copy.deepcopy(dict(base))
    for sec, vals in top.items():
        cur = out.setdefault(sec, {})
        for k, v in (vals or {}).items():
            if k in ("model_cfg", "augment") and isinstance(v, Mapping) and isinstance(cur.get(k), Mapping):
                cur[k] = {**cur[k], **v}
            else:
                cur[k] = v
    return out

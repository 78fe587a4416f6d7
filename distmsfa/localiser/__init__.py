"""Automatic sacroiliac ROI (issue 13): a small MONAI 3D UNet that finds the left and right
joints on a coarse, wide grid, so cases without a radiologist's ROI can be cropped, plus the
per-joint split of Grad-CAM evidence.  Core: no Ray.  See docs/localiser.md.

Public API (imported lazily: ``import distmsfa.localiser`` does not import torch)::

    from distmsfa.localiser import load_localiser, predict_roi, train_localiser, joint_evidence
    loc = load_localiser("runs/localiser")
    label_map, info = predict_roi(loc, t1, fs)     # sitk images in; RoiPredictionError if implausible
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LocaliserConfig": "distmsfa.localiser.config",
    "LocaliserTrainConfig": "distmsfa.localiser.config",
    "LEFT": "distmsfa.localiser.config",
    "RIGHT": "distmsfa.localiser.config",
    "Localiser": "distmsfa.localiser.model",
    "RoiPredictionError": "distmsfa.localiser.model",
    "predict_roi": "distmsfa.localiser.model",
    "postprocess": "distmsfa.localiser.model",
    "prepare_case": "distmsfa.localiser.grid",
    "save_localiser": "distmsfa.localiser.store",
    "load_localiser": "distmsfa.localiser.store",
    "localiser_checksum": "distmsfa.localiser.store",
    "LocaliserError": "distmsfa.localiser.store",
    "fit": "distmsfa.localiser.train",
    "evaluate": "distmsfa.localiser.train",
    "load_cases": "distmsfa.localiser.train",
    "train_localiser": "distmsfa.localiser.cv",
    "joint_evidence": "distmsfa.localiser.evidence",
    "attach_localiser": "distmsfa.localiser.bundle",
    "bundle_localiser": "distmsfa.localiser.bundle",
    "localiser_folder": "distmsfa.localiser.bundle",
    "joint_shares": "distmsfa.localiser.evidence",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distmsfa.localiser' has no attribute {name!r}")

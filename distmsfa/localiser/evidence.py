"""Per-joint evidence: how much of each branch's Grad-CAM energy lies in each joint's mask.

Inputs are in crop space: ``cams`` as returned by ``distmsfa.models.gradcam.gradcam`` (or the
bundle's ``EnsemblePredictor.gradcam``): ``{branch: (D, H, W)}`` for one case or
``{branch: (B, D, H, W)}`` for a batch, non-negative; ``roi`` the dataset's
``rois/<case>.npy`` (uint8, same grid; 1 = left joint, 2 = right joint) or ``(B, D, H, W)``.

For each branch: ``left`` = sum of the map over the left mask / sum over the crop, likewise
``right``; ``outside`` = the rest; ``side`` = the joint holding more evidence (``"left"``,
``"right"``, or ``"none"`` for an all-zero map).  Shares are of the map's total *energy*
(sum of its values), so they do not depend on the map's [0, 1] scaling.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from distmsfa.localiser.config import JOINTS


def joint_shares(cam: np.ndarray, roi: np.ndarray) -> dict:
    """One map ``(D, H, W)`` and its crop ROI -> ``{left, right, outside, side}``."""
    cam = np.asarray(cam, dtype=np.float64)
    roi = np.asarray(roi)
    if cam.shape != roi.shape:
        raise ValueError(f"Grad-CAM map {cam.shape} and ROI {roi.shape} are not on the same crop grid; "
                         f"upsample the map to the crop (gradcam() does) and use the dataset's rois/<case>.npy")
    if not np.isfinite(cam).all():
        raise ValueError("Grad-CAM map has NaN/Inf values")
    cam = np.clip(cam, 0.0, None)
    total = float(cam.sum())
    out: dict = {}
    for name, lab in JOINTS.items():
        out[name] = round(float(cam[roi == lab].sum()) / total, 4) if total > 0 else 0.0
    out["outside"] = round(max(0.0, 1.0 - out["left"] - out["right"]), 4) if total > 0 else 0.0
    out["side"] = "none" if total == 0 else ("left" if out["left"] >= out["right"] else "right")
    return out


def joint_evidence(cams: Mapping[str, np.ndarray], roi: np.ndarray) -> dict | list[dict]:
    """Per-branch joint shares.  One case: ``{branch: shares}``; a batch: one such dict per case."""
    roi = np.asarray(roi)
    shapes = {k: np.asarray(v).shape for k, v in cams.items()}
    if not cams:
        return {}
    batched = {len(s) for s in shapes.values()} == {4}
    if batched:
        b = next(iter(shapes.values()))[0]
        if roi.ndim == 3:
            roi = np.broadcast_to(roi, (b, *roi.shape))
        return [{k: joint_shares(np.asarray(v)[i], roi[i]) for k, v in cams.items()} for i in range(b)]
    return {k: joint_shares(v, roi) for k, v in cams.items()}

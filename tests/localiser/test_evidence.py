"""Per-joint split of Grad-CAM energy (crop space, rois/<case>.npy labels 1 = left, 2 = right)."""
from __future__ import annotations

import numpy as np
import pytest

from distmsfa.localiser import joint_evidence, joint_shares


def _roi(shape=(8, 48, 64)):
    roi = np.zeros(shape, np.uint8)
    roi[2:6, 10:38, 40:52] = 1  # left joint: high W (patient left in the LIP crop)
    roi[2:6, 10:38, 12:24] = 2
    return roi


def _blob(shape, centre, sigma=(1.5, 4.0, 3.0)):
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return np.exp(-sum((g - c) ** 2 / (2 * s ** 2) for g, c, s in zip(grid, centre, sigma))).astype(np.float32)


def test_heat_on_one_joint_is_assigned_to_that_joint():
    roi = _roi()
    on_left = _blob(roi.shape, (4, 24, 46))
    on_right = _blob(roi.shape, (4, 24, 18))
    ev = joint_evidence({"t1": on_left, "fs": on_right, "fuse": on_left + on_right}, roi)
    assert ev["t1"]["side"] == "left" and ev["t1"]["left"] > 0.7 and ev["t1"]["right"] < 0.01
    assert ev["fs"]["side"] == "right" and ev["fs"]["right"] > 0.7 and ev["fs"]["left"] < 0.01
    assert abs(ev["fuse"]["left"] - ev["fuse"]["right"]) < 0.02
    for v in ev.values():
        assert abs(v["left"] + v["right"] + v["outside"] - 1) < 1e-3


def test_heat_outside_the_joints_and_batches():
    roi = _roi()
    away = _blob(roi.shape, (4, 44, 32), sigma=(1, 1, 1))  # between the joints, inferior
    cams = {"t1": np.stack([away, _blob(roi.shape, (4, 24, 46))]), "fs": np.zeros((2, *roi.shape), np.float32)}
    ev = joint_evidence(cams, roi)
    assert isinstance(ev, list) and len(ev) == 2
    assert ev[0]["t1"]["outside"] > 0.95 and ev[1]["t1"]["side"] == "left"
    assert ev[0]["fs"] == {"left": 0.0, "right": 0.0, "outside": 0.0, "side": "none"}


def test_grid_mismatch_is_refused():
    with pytest.raises(ValueError, match="same crop grid"):
        joint_shares(np.ones((8, 48, 32)), _roi())

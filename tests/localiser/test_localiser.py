"""The localiser: learns where the joints are, saves without pickles, refuses implausible output."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from distmsfa.localiser import (
    LocaliserConfig, LocaliserError, RoiPredictionError, evaluate, load_localiser, postprocess, predict_roi,
)
from distmsfa.localiser.grid import coarse_grid
from distmsfa.localiser.train import summarise


@pytest.mark.slow
def test_trained_localiser_beats_centre_of_image_box(trained):
    _, loc, held_out = trained
    s = summarise(evaluate(loc, held_out))
    assert s["n"] == len(held_out) and s["err_roi_mm"]["n"] == len(held_out)
    # the baseline: a box centred on the image (the ROI centre guessed at the T1's centre)
    assert s["err_roi_mm"]["mean"] < s["err_centre_baseline_mm"]["mean"], s
    assert s["dice_left"] > 0.4 and s["dice_right"] > 0.4, s
    assert s["err_left_mm"]["mean"] < 15 and s["err_right_mm"]["mean"] < 15, s


@pytest.mark.slow
def test_predict_roi_gives_left_and_right_in_the_patient_frame(trained, cohort):
    _, loc, held_out = trained
    case_dir = cohort.parent / "cases" / held_out[0].case_id
    t1, fs = sitk.ReadImage(str(case_dir / "t1.nii.gz")), sitk.ReadImage(str(case_dir / "fs.nii.gz"))
    label_map, info = predict_roi(loc, t1, fs)
    assert label_map.GetSize() == tuple(reversed(loc.cfg.grid_size_dhw))
    assert set(np.unique(sitk.GetArrayViewFromImage(label_map))) == {0, 1, 2}
    left, right = np.asarray(info["centroids_mm"]["left"]), np.asarray(info["centroids_mm"]["right"])
    assert left[0] > right[0]  # LPS +x is the patient's left
    truth = held_out[0].centroids_mm
    assert np.linalg.norm(left - truth["left"]) < 15 and np.linalg.norm(right - truth["right"]) < 15
    assert info["volumes_ml"]["left"] > loc.cfg.min_joint_volume_ml and not info["problems"]


@pytest.mark.slow
def test_saved_localiser_is_data_and_round_trips(trained):
    folder, loc, held_out = trained
    assert sorted(p.name for p in folder.iterdir()) == ["localiser.json", "weights.safetensors"]
    again = load_localiser(folder)
    x = held_out[0].coarse.x
    np.testing.assert_allclose(again.probabilities(x), loc.probabilities(x), atol=1e-6)
    meta = json.loads((folder / "localiser.json").read_text(encoding="utf-8"))
    assert meta["config"]["grid_size_dhw"] == list(loc.cfg.grid_size_dhw)
    w = folder / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    try:
        with pytest.raises(LocaliserError, match="checksum"):
            load_localiser(folder)
    finally:
        data[-1] ^= 0xFF
        w.write_bytes(bytes(data))


def _probs(cfg, blobs):
    """Softmax-like maps with a cube of probability 0.9 per (label, centre index, half-size)."""
    p = np.zeros((3, *cfg.grid_size_dhw), np.float32)
    p[0] = 1.0
    for lab, (d, h, w), r in blobs:
        sl = (slice(max(0, d - r[0]), d + r[0] + 1), slice(max(0, h - r[1]), h + r[1] + 1), slice(max(0, w - r[2]), w + r[2] + 1))
        p[lab][sl] = 0.9
        p[0][sl] = 0.1
    return p


@pytest.fixture
def geometry():
    cfg = LocaliserConfig(grid_size_dhw=(8, 32, 32), spacing_dhw_mm=(10.0, 8.0, 8.0), channels=(8, 16, 32))
    t1 = sitk.Image([64, 64, 16], sitk.sitkInt16)
    t1.SetSpacing((3.0, 3.0, 4.0))
    t1.SetOrigin((-94.5, -94.5, -30.0))
    ref = coarse_grid(t1, cfg)
    return cfg, ref, np.asarray(ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ref.GetSize()]))


def test_plausible_synthetic_prediction_passes(geometry):
    cfg, ref, centre = geometry
    # LIP grid: W runs to the patient's left, so label 1 (left) sits at high W
    img, info = postprocess(_probs(cfg, [(1, (4, 16, 20), (1, 3, 1)), (2, (4, 16, 11), (1, 3, 1))]), ref, centre, cfg)
    assert not info["problems"] and info["centroids_mm"]["left"][0] > info["centroids_mm"]["right"][0]
    assert 60 < info["separation_mm"] < 80 and info["centre_offset_mm"] < 10


@pytest.mark.parametrize("blobs, problem", [
    ([(1, (4, 16, 20), (1, 3, 1))], "no right joint found"),
    ([(1, (4, 16, 20), (0, 0, 0)), (2, (4, 16, 11), (1, 3, 1))], "left joint too small"),
    ([(1, (4, 16, 11), (1, 3, 1)), (2, (4, 16, 20), (1, 3, 1))], "swapped"),
    ([(1, (4, 2, 29), (1, 1, 1)), (2, (4, 2, 21), (1, 1, 1))], "from the image centre"),
    ([(1, (4, 16, 17), (1, 3, 1)), (2, (4, 16, 15), (1, 3, 0))], "mm apart"),
])
def test_implausible_prediction_is_refused_naming_the_problem(geometry, blobs, problem):
    cfg, ref, centre = geometry
    with pytest.raises(RoiPredictionError, match=problem) as exc:
        postprocess(_probs(cfg, blobs), ref, centre, cfg)
    assert str(exc.value).startswith("roi: no plausible sacroiliac joints predicted")
    # evaluation keeps going: the same problem is reported, not raised
    _, info = postprocess(_probs(cfg, blobs), ref, centre, cfg, check=False)
    assert any(problem in p for p in info["problems"])


@pytest.mark.slow
def test_scan_without_joints_is_refused(trained, cohort):
    """A study with no joints in it (here: noise on the case's own grids) gives a per-case
    error naming the problem, not a silent crop."""
    _, loc, held_out = trained
    case_dir = cohort.parent / "cases" / held_out[0].case_id
    t1, fs = sitk.ReadImage(str(case_dir / "t1.nii.gz")), sitk.ReadImage(str(case_dir / "fs.nii.gz"))
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(100, 10, sitk.GetArrayViewFromImage(t1).shape).astype(np.float32))
    noise.CopyInformation(t1)
    noise_fs = sitk.GetImageFromArray(rng.normal(100, 10, sitk.GetArrayViewFromImage(fs).shape).astype(np.float32))
    noise_fs.CopyInformation(fs)
    with pytest.raises(RoiPredictionError, match="roi: no plausible sacroiliac joints"):
        predict_roi(loc, noise, noise_fs)

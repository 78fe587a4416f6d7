"""Grad-CAM localisation scores: a map on the lesion beats the uniform and random-blob
baselines, a map away from it does not; the lesion mask lands on the crop grid."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from distmsfa.evaluation.localisation import lesion_mask_in_crop, localisation_scores, pointing_hit

SHAPE = (8, 40, 48)
SPACING = (5.0, 2.5, 2.5)


def _blob(center, sigma=(1.0, 3.0, 3.0)):
    g = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return np.exp(-sum((gi - c) ** 2 / (2 * s ** 2) for gi, c, s in zip(g, center, sigma)))


def _masks(n=4):
    m = np.zeros((n, *SHAPE), bool)
    for i in range(n):
        m[i, 3:6, 10 + i:16 + i, 12:18] = True
    return m


def test_a_map_on_the_lesion_beats_the_baselines_and_one_away_does_not():
    masks = _masks()
    on = np.stack([_blob((4, 13 + i, 15)) for i in range(len(masks))])
    away = np.stack([_blob((4, 33, 40)) for _ in range(len(masks))])
    res = localisation_scores({"fuse": on, "t1": away}, masks, SPACING, tolerance_mm=5.0, n_random=10, seed=0)
    assert res["n_cases"] == 4 and res["tolerance_mm"] == 5.0
    good, bad = res["branches"]["fuse"], res["branches"]["t1"]
    assert good["pointing"] == 1.0 and bad["pointing"] == 0.0
    for base in ("uniform", "random_blobs"):
        assert good["pointing"] > res[base]["pointing"] and good["energy"] > res[base]["energy"]
        assert bad["pointing"] <= res[base]["pointing"] and bad["energy"] <= res[base]["energy"]
    # seeded baselines
    again = localisation_scores({"fuse": on}, masks, SPACING, n_random=10, seed=0)
    assert again["random_blobs"] == res["random_blobs"]


def test_tolerance_is_physical_and_flat_maps_score_chance():
    mask = np.zeros(SHAPE, bool)
    mask[4, 20, 20] = True
    near = np.zeros(SHAPE)
    near[4, 20, 22] = 1.0  # 5 mm away in plane
    from distmsfa.evaluation.localisation import _dilate

    assert pointing_hit(near, _dilate(mask, SPACING, 5.0)) == 1.0
    assert pointing_hit(near, _dilate(mask, SPACING, 2.0)) == 0.0
    flat = np.ones(SHAPE)
    assert pointing_hit(flat, mask) == mask.mean()
    empty = localisation_scores({"fuse": flat[None]}, np.zeros((1, *SHAPE), bool), SPACING)
    assert empty["n_cases"] == 0


def test_lesion_mask_is_resampled_onto_the_crop_grid(tmp_path):
    # a lesion image on its own grid (1 mm, shifted origin), one labelled box in physical space
    arr = np.zeros((30, 80, 90), np.uint8)  # z, y, x
    arr[10:20, 30:40, 40:50] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    img.SetOrigin((-10.0, -20.0, -5.0))
    path = tmp_path / "lesion.nii.gz"
    sitk.WriteImage(img, str(path))
    row = {"shape": [2, 6, 20, 24], "spacing_mm": [5.0, 2.5, 2.5], "crop_origin_mm": [0.0, 0.0, 0.0],
           "crop_direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}
    m = lesion_mask_in_crop(str(path), row)
    assert m.shape == (6, 20, 24) and m.any()
    # physical box: x in [30, 40), y in [10, 20), z in [5, 15) mm; crop voxel (k, j, i) sits at (2.5 i, 2.5 j, 5 k)
    k, j, i = np.nonzero(m)
    assert (2.5 * i).min() >= 29.9 and (2.5 * i).max() <= 40 and (2.5 * j).min() >= 9.9 and (5 * k).min() >= 4.9
    assert not lesion_mask_in_crop(str(path), row, codes=[2]).any()

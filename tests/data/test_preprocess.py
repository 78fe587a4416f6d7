"""Pure preprocessing: physical-space alignment, canonical orientation, crop, scaling."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from distmsfa.config import ConfigError
from distmsfa.data import PAPER_CROP_DHW
from distmsfa.data.fingerprint import canonical_spacing_dhw
from distmsfa.data.preprocess import PreprocessConfig, Roi, preprocess_images
from distmsfa.io import ImageReadError
from distmsfa.io.phantom import AXIAL, CORONAL, grid, physical_points, render

OBLIQUE_COR = tuple((np.asarray(sitk.VersorTransform((1, 0.3, 0.1), 0.2).GetMatrix()).reshape(3, 3)
                     @ np.asarray(CORONAL).reshape(3, 3)).ravel())
CFG = PreprocessConfig(crop_size=(20, 40, 56), target_spacing_mm=(5.0, 3.0, 3.0))


def _case(fs_dir=OBLIQUE_COR, fs_center=(4.0, -3.0, 5.0)):
    t1g = grid((64, 48, 14), (4.0, 4.0, 8.0), AXIAL)
    fsg = grid((80, 24, 60), (3.5, 7.0, 3.5), fs_dir, fs_center)
    return render(t1g, "t1"), render(fsg, "fs", seed=3), render(t1g, "roi")


def _crop_grid(res, size_dhw):
    ref = sitk.Image([int(v) for v in size_dhw[::-1]], sitk.sitkFloat32)
    ref.SetSpacing([float(v) for v in res.spacing_dhw[::-1]])
    ref.SetOrigin(res.crop_origin_mm)
    ref.SetDirection(res.crop_direction)
    return ref


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_fs_on_another_grid_lands_on_the_t1_anatomy():
    t1, fs, roi = _case()
    res = preprocess_images(t1, fs, Roi(label_map=roi), CFG, CFG.target_spacing_mm)
    assert res.pair.shape == (2, *CFG.crop_size) and res.pair.dtype == np.float16
    assert res.roi.shape == CFG.crop_size and res.roi.dtype == np.uint8
    ref = _crop_grid(res, CFG.crop_size)
    truth_fs = sitk.GetArrayFromImage(render(ref, "fs", noise=0))
    truth_t1 = sitk.GetArrayFromImage(render(ref, "t1", noise=0))
    shifted = sitk.GetArrayFromImage(render(ref, "fs", shift_mm=(8.0, 0, 0), noise=0))
    fs_out, t1_out = res.pair[1].astype(np.float32), res.pair[0].astype(np.float32)
    inside = fs_out > 0  # the FS field of view
    assert _corr(fs_out[inside], truth_fs[inside]) > 0.85
    assert _corr(fs_out[inside], truth_fs[inside]) > _corr(fs_out[inside], shifted[inside]) + 0.15
    assert _corr(t1_out[t1_out > 0], truth_t1[t1_out > 0]) > 0.85
    # the ROI resampled with nearest neighbour keeps its labels and its place
    truth_roi = sitk.GetArrayFromImage(render(ref, "roi"))
    assert set(np.unique(res.roi)) == {0, 1, 2}
    dice = 2 * ((res.roi > 0) & (truth_roi > 0)).sum() / ((res.roi > 0).sum() + (truth_roi > 0).sum())
    assert dice > 0.8


def test_canonical_orientation_lip_and_centring():
    t1, fs, roi = _case()
    res = preprocess_images(t1, fs, Roi(label_map=roi), CFG, CFG.target_spacing_mm)
    d = np.asarray(res.crop_direction).reshape(3, 3)
    np.testing.assert_allclose(d, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-9)  # x->L, y->I, z->P
    # the crop is centred on the ROI centroid (joints at x=+-55, y=10, z=0)
    centre = np.asarray(res.crop_origin_mm) + d @ ((np.asarray(CFG.crop_size[::-1]) - 1) / 2 * np.asarray(res.spacing_dhw[::-1]))
    np.testing.assert_allclose(centre, [0.0, 10.0, 0.0], atol=2.5)
    # label 1 (patient left, x>0) lies at high W; label 2 (right) at low W
    w1 = np.argwhere(res.roi == 1)[:, 2].mean()
    w2 = np.argwhere(res.roi == 2)[:, 2].mean()
    assert w1 > CFG.crop_size[2] / 2 > w2
    np.testing.assert_allclose(res.crop_size_mm, np.asarray(CFG.crop_size) * np.asarray(CFG.target_spacing_mm))
    # the oedema sphere (LPS (45, 5, 10), r 9 mm: left, superior) lands where the crop geometry
    # says: FS-bright on its own voxels (outside the joint it touches), FS at body level on its
    # mirror images (a W or H flip of the arrays would swap them).
    pts = physical_points(_crop_grid(res, CFG.crop_size))
    fs_out = res.pair[1].astype(np.float32)

    def sphere(c):
        return ((((pts - np.asarray(c, np.float32)) / 9) ** 2).sum(-1) <= 1) & (res.roi == 0)

    oedema = sphere((45, 5, 10))
    assert oedema.sum() > 20
    assert fs_out[oedema].mean() > 0.9
    assert fs_out[sphere((-45, 5, 10))].mean() < 0.6 and fs_out[sphere((45, 5, -10))].mean() < 0.6
    centroid = np.argwhere(oedema).mean(0)
    assert centroid[1] < (CFG.crop_size[1] - 1) / 2, "superior: above the crop centre on H (S->I)"
    assert centroid[2] > (CFG.crop_size[2] - 1) / 2, "patient left: high W (R->L)"


def test_oblique_direction_is_kept_not_resampled_to_axes():
    t1g = grid((48, 40, 12), (4.0, 4.0, 6.0), OBLIQUE_COR)
    t1, roi = render(t1g, "t1"), render(t1g, "roi")
    res = preprocess_images(t1, t1, Roi(label_map=roi), CFG, CFG.target_spacing_mm)
    d = np.asarray(res.crop_direction).reshape(3, 3)
    src = np.asarray(OBLIQUE_COR).reshape(3, 3)
    # each crop axis is +- one source axis (a permutation/flip, no rotation)
    prod = np.abs(d.T @ src)
    np.testing.assert_allclose(np.sort(prod, axis=1)[:, -1], 1.0, atol=1e-9)
    # the source is a slightly rotated coronal grid whose axes already run L, I, P: kept as is
    np.testing.assert_allclose(d, src, atol=1e-9)
    assert d[0, 0] > 0.9 and d[2, 1] < -0.9 and d[1, 2] > 0.9  # crop x -> L, y -> I (-S), z -> P


def test_padding_and_robust_scaling():
    t1, fs, roi = _case()
    arr = sitk.GetArrayFromImage(t1)
    arr[0, 0, 0] = 30000  # one hot pixel must not squash the rest
    spike = sitk.GetImageFromArray(arr)
    spike.CopyInformation(t1)
    big = PreprocessConfig(crop_size=(40, 60, 120), target_spacing_mm=(5.0, 3.0, 3.0))
    res = preprocess_images(spike, fs, Roi(label_map=roi), big, big.target_spacing_mm)
    t1c = res.pair[0].astype(np.float32)
    assert t1c.min() >= 0 and t1c.max() <= 1
    assert t1c[:, :, :3].max() == 0 and t1c[:, :, -3:].max() == 0  # zero padding beyond the image
    assert res.t1_coverage < 1
    body = t1c[t1c > 0.05]
    assert np.median(body) > 0.3  # the body is not compressed near 0 by the spike


def test_roi_center_and_bbox():
    t1, fs, _ = _case()
    r1 = preprocess_images(t1, fs, Roi(center_mm=(0, 10, 0)), CFG, CFG.target_spacing_mm)
    assert not r1.roi.any()
    r2 = preprocess_images(t1, fs, Roi(bbox_mm=(40, -15, -40, 63, 35, 40)), CFG, CFG.target_spacing_mm)
    assert r2.roi.any() and set(np.unique(r2.roi)) == {0, 1}
    w = np.unique(np.argwhere(r2.roi)[:, 2])
    assert abs(len(w) - 23 / 3.0) <= 1.5  # 23 mm wide box at 3 mm spacing along W (R->L)


@pytest.mark.parametrize("problem,match", [
    ("nan", "NaN/Inf"), ("constant", "constant image"), ("no_overlap", "no physical overlap"),
    ("empty_roi", "label map is empty"), ("roi_outside", "outside the t1 image"),
])
def test_bad_images(problem, match):
    t1, fs, roi = _case()
    if problem == "nan":
        a = sitk.GetArrayFromImage(fs).astype(np.float32)
        a[2, 3, 4] = np.nan
        fs2 = sitk.GetImageFromArray(a)
        fs2.CopyInformation(fs)
        fs = fs2
    elif problem == "constant":
        t1 = t1 * 0 + 7
    elif problem == "no_overlap":
        fs.SetOrigin((np.asarray(fs.GetOrigin()) + [0, 0, 2000]).tolist())
    elif problem == "empty_roi":
        roi = roi * 0
    elif problem == "roi_outside":
        roi.SetOrigin((np.asarray(roi.GetOrigin()) + [900, 0, 0]).tolist())
    with pytest.raises(ImageReadError, match=match):
        preprocess_images(sitk.Cast(t1, sitk.sitkFloat32), sitk.Cast(fs, sitk.sitkFloat32), Roi(label_map=roi), CFG,
                          CFG.target_spacing_mm)


def test_config_validation_says_how_to_fix():
    assert PreprocessConfig().crop_size == PAPER_CROP_DHW == (24, 224, 320)
    with pytest.raises(ConfigError, match="crop_size must be 3 positive integers"):
        PreprocessConfig(crop_size=(24, 224))
    with pytest.raises(ConfigError, match="orientation must be 3 letters"):
        PreprocessConfig(orientation="LLP")
    with pytest.raises(ConfigError, match="clip_percentiles"):
        PreprocessConfig(clip_percentiles=(99, 1))
    with pytest.raises(ConfigError, match="did you mean 'crop_size'"):
        PreprocessConfig.from_dict({"crop_sise": [1, 2, 3]})
    cfg = PreprocessConfig.from_dict({"target_spacing_mm": [4, 0.5, 0.5], "crop_size": [8, 16, 16]})
    assert cfg.target_spacing_mm == (4.0, 0.5, 0.5) and cfg.crop_size == (8, 16, 16)


def test_canonical_spacing_from_headers():
    assert canonical_spacing_dhw((0.45, 0.45, 4.0), AXIAL, "LIP") == (0.45, 4.0, 0.45)
    assert canonical_spacing_dhw((0.45, 0.45, 4.0), CORONAL, "LIP") == (4.0, 0.45, 0.45)


def test_overlap_check_sees_thin_slabs():
    """A thin coronal T1 slab (20 slices over 512x512) and an FS slab of its own: overlap found."""
    from distmsfa.data.preprocess import _overlap

    t1g = grid((256, 256, 10), (0.9, 0.9, 8.0), CORONAL)
    fsg = grid((224, 224, 6), (0.7, 0.7, 6.0), CORONAL, (2.0, 3.0, -1.0))
    assert _overlap(t1g, fsg) and _overlap(fsg, t1g)
    far = grid((224, 224, 6), (0.7, 0.7, 6.0), CORONAL, (2.0, 3.0, 400.0))
    assert not _overlap(t1g, far)


def test_roi_mask_keeps_the_roi_neighbourhood_and_zeroes_the_rest():
    """roi_mask_mm: voxels within the distance of the ROI are the unmasked crop's, all others 0."""
    from distmsfa.data.fingerprint import params_fingerprint
    from distmsfa.data.preprocess import roi_neighbourhood

    t1, fs, roi = _case()
    plain = preprocess_images(t1, fs, Roi(label_map=roi), CFG, CFG.target_spacing_mm)
    masked_cfg = CFG.replace(roi_mask_mm=6.0)
    masked = preprocess_images(t1, fs, Roi(label_map=roi), masked_cfg, CFG.target_spacing_mm)
    keep = roi_neighbourhood(plain.roi, CFG.target_spacing_mm, 6.0)
    assert plain.roi.any() and keep.sum() > (plain.roi > 0).sum()  # dilated beyond the ROI itself
    assert 0 < keep.mean() < 0.9
    np.testing.assert_array_equal(masked.pair[:, keep], plain.pair[:, keep])
    assert masked.pair[:, ~keep].max() == 0 and plain.pair[:, ~keep].max() > 0
    np.testing.assert_array_equal(masked.roi, plain.roi)
    # distances are physical: 6 mm reaches 1 voxel along D (5 mm) and 2 along H/W (3 mm)
    one = np.zeros((9, 9, 9), np.uint8)
    one[4, 4, 4] = 1
    nb = roi_neighbourhood(one, (5.0, 3.0, 3.0), 6.0)
    assert nb[3, 4, 4] and not nb[2, 4, 4] and nb[4, 2, 4] and not nb[4, 1, 4] and nb[4, 4, 6] and not nb[4, 4, 7]
    # a box ROI masks too; a centre alone cannot and says how to fix it
    preprocess_images(t1, fs, Roi(bbox_mm=(40, -15, -40, 63, 35, 40)), masked_cfg, CFG.target_spacing_mm)
    with pytest.raises(ImageReadError, match="roi_mask_mm=6.*label map"):
        preprocess_images(t1, fs, Roi(center_mm=(0, 10, 0)), masked_cfg, CFG.target_spacing_mm)
    # the option is part of the dataset fingerprint only when set (old datasets keep theirs)
    assert params_fingerprint(CFG, (5.0, 3.0, 3.0)) == params_fingerprint(CFG.replace(roi_mask_mm=None), (5.0, 3.0, 3.0))
    assert params_fingerprint(CFG, (5.0, 3.0, 3.0)) != params_fingerprint(masked_cfg, (5.0, 3.0, 3.0))
    with pytest.raises(ConfigError, match="roi_mask_mm"):
        PreprocessConfig(roi_mask_mm=-1)

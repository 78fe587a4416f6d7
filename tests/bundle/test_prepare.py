"""`EnsemblePredictor.prepare` reproduces the dataset's preprocessing from raw files (a real
synthetic cohort built by build_dataset) and warns where a scan leaves the training cohort."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from distmsfa.bundle import load_bundle
from distmsfa.data.index import load_pair, read_index
from distmsfa.data.preprocess import Roi
from distmsfa.io.manifest import load_manifest
from distmsfa.io.readers import read_image, read_label_map

pytestmark = pytest.mark.slow


def _raw(case):
    t1 = read_image(case.t1, case.t1_series, "t1").image
    fs = read_image(case.fs, case.fs_series, "fs").image
    roi = Roi(label_map=read_label_map(case.roi).image if case.roi else None,
              center_mm=case.roi_center_mm, bbox_mm=case.roi_bbox_mm)
    return t1, fs, roi


@pytest.fixture(scope="module")
def pred(syn):
    return load_bundle(syn[3], device="cpu")


def test_prepare_equals_the_stored_pairs(syn, pred):
    manifest, data, _, _ = syn
    idx = read_index(data).set_index("case_id")
    cases = load_manifest(manifest).cases
    internal = [c for c in cases if not idx.loc[c.case_id, "is_external"]][:2]
    external = [c for c in cases if idx.loc[c.case_id, "is_external"]][:1]
    for case in internal + external:
        res, warnings = pred.prepare(*_raw(case))
        stored = load_pair(data, idx.loc[case.case_id])
        assert res.pair.shape == stored.shape == (2, *pred.crop_size)
        np.testing.assert_allclose(res.pair.astype(np.float32), stored.astype(np.float32), atol=1e-3)
        assert warnings == [], (case.case_id, warnings)
    # the prepared pair scores as the stored one
    res, _ = pred.prepare(*_raw(internal[0]))
    stored = load_pair(data, idx.loc[internal[0].case_id])
    np.testing.assert_allclose(pred.predict(res.pair[None])["prob"], pred.predict(stored[None])["prob"], atol=1e-5)


def test_prepare_warns_about_spacing_and_size_outside_the_cohort(syn, pred):
    case = load_manifest(syn[0]).cases[0]
    t1, fs, roi = _raw(case)
    # a T1 resampled to 3x coarser in-plane voxels: spacing above the cohort's maximum, size below half the median
    sp = np.asarray(t1.GetSpacing())
    new_sp = (sp[0] * 3, sp[1] * 3, sp[2])
    size = [int(round(n * s / t)) for n, s, t in zip(t1.GetSize(), sp, new_sp)]
    coarse = sitk.Resample(t1, size, sitk.Transform(), sitk.sitkLinear, t1.GetOrigin(), new_sp, t1.GetDirection())
    _, warnings = pred.prepare(coarse, fs, roi)
    spacing = [w for w in warnings if w.startswith("t1 spacing")]
    sizes = [w for w in warnings if w.startswith("t1 size")]
    assert spacing and sizes, warnings
    assert all("x the training cohort" in w and "mm" in w for w in spacing)
    assert not [w for w in warnings if w.startswith("fs ")]  # the FS is untouched


def test_prepare_warns_about_a_small_field_of_view(syn, pred):
    case = load_manifest(syn[0]).cases[0]
    t1, fs, roi = _raw(case)
    # keep only a thin band of the FS (cropped field of view): the crop is mostly padding
    n = fs.GetSize()
    band = fs[:, :, n[2] // 2 - 1:n[2] // 2 + 1] if n[2] > 4 else fs[:, n[1] // 2 - 1:n[1] // 2 + 1, :]
    _, warnings = pred.prepare(t1, band, roi)
    assert any(w.startswith("fs covers") and "zero padding" in w for w in warnings), warnings


def test_prepare_warns_about_intensity_far_from_the_training_cases(syn, pred):
    case = load_manifest(syn[0]).cases[0]
    t1, fs, roi = _raw(case)
    # a constant-ish background with one bright speck: after the percentile scaling almost every
    # voxel is 0, far below the training cases' mean crop intensity
    arr = sitk.GetArrayFromImage(fs).astype(np.float32)
    dark = np.zeros_like(arr)
    dark.flat[:: 97] = 1.0
    img = sitk.GetImageFromArray(dark)
    img.CopyInformation(fs)
    _, warnings = pred.prepare(t1, img, roi)
    msgs = [w for w in warnings if w.startswith("fs mean intensity")]
    assert msgs and "SD below the training cases'" in msgs[0], warnings
    assert pred.intensity["fs"]["n"] >= 5 and pred.intensity["fs"]["sd"] > 0


def test_dataset_differences(syn, pred, tmp_path):
    import json
    import shutil

    data = syn[1]
    assert pred.dataset_differences(data) == []
    other = tmp_path / "other"
    other.mkdir()
    fp = json.loads((data / "fingerprint.json").read_text())
    fp["params"]["crop_size"] = [8, 32, 32]
    fp["params"]["resolved_spacing_dhw"] = [4.0, 0.5, 0.5]
    (other / "fingerprint.json").write_text(json.dumps(fp))
    diffs = pred.dataset_differences(other)
    assert diffs == ["resolved_spacing_dhw: dataset [4.0, 0.5, 0.5] vs bundle [5.0, 2.5, 2.5]",
                     "crop_size: dataset [8, 32, 32] vs bundle [8, 48, 64]"]
    shutil.rmtree(other)
    other.mkdir()
    assert "no readable fingerprint.json" in pred.dataset_differences(other)[0]

"""Real MRI fixtures (../shared/data): DICOM studies with many series, oblique anisotropic
NIfTI with registration transforms, an enhanced multi-frame file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from distmsfa.data import PreprocessConfig, build_dataset
from distmsfa.data.index import load_pair, read_index
from distmsfa.data.preprocess import Roi, normalize, preprocess_images
from distmsfa.io import ImageReadError, read_image

pytestmark = pytest.mark.realdata

PX = {  # study folder, T2 selector (0001 holds two t2_tse_tra series: pick by UID)
    "px0000": ("prostatex/ProstateX-0000/07-07-2011", "t2_tse_tra"),
    "px0001": ("prostatex/ProstateX-0001/07-08-2011", "1.3.6.1.4.1.14519.5.2.1.7311.5101.143550427570936841761028976610"),
}


def _center(img: sitk.Image) -> tuple[float, ...]:
    return img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])


def _shifted(img: sitk.Image, mm) -> sitk.Image:
    out = sitk.Image(img)
    out.SetOrigin(tuple(np.add(img.GetOrigin(), mm)))
    return out


def _corr(a, b):
    m = (a > 0) & (b > 0)
    return float(np.corrcoef(a[m], b[m])[0, 1])


def _nmi(a, b, bins=32):
    m = (a > 0) & (b > 0)
    h = np.histogram2d(a[m], b[m], bins=bins)[0]
    p = h / h.sum()
    ent = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()  # noqa: E731
    return float((ent(p.sum(0)) + ent(p.sum(1))) / ent(p))


@pytest.mark.parametrize("case", sorted(PX))
def test_prostatex_adc_lands_on_t2_anatomy(real_data, case):
    folder, t2_sel = PX[case]
    t2 = read_image(str(real_data / folder), t2_sel, "t1").image
    adc = read_image(str(real_data / folder), "ADC", "fs").image  # selected by description
    assert adc.GetSpacing()[0] == pytest.approx(2.0) and t2.GetSpacing()[0] == pytest.approx(0.5)
    cfg = PreprocessConfig(crop_size=(48, 24, 64), target_spacing_mm=(2.0, 2.0, 2.0))
    roi = Roi(center_mm=_center(t2))
    res = preprocess_images(t2, adc, roi, cfg, cfg.target_spacing_mm)
    a, b = res.pair.astype(np.float32)
    assert res.fs_coverage > 0.9
    aligned = (_corr(a, b), _nmi(a, b))
    # controls: the ADC deliberately displaced by 8-10 mm matches the T2 anatomy worse
    for mm in [(10, 0, 0), (0, 10, 0), (0, 0, 6), (-8, -8, 0)]:
        r2 = preprocess_images(t2, _shifted(adc, mm), roi, cfg, cfg.target_spacing_mm)
        a2, b2 = r2.pair.astype(np.float32)
        assert aligned[0] > _corr(a2, b2) + 0.03, mm
        assert aligned[1] > _nmi(a2, b2), mm


def test_prostatex_bad_series_are_refused_with_reasons(real_data):
    study = str(real_data / PX["px0001"][0])
    with pytest.raises(ImageReadError, match="'t2_tse_tra' matches 2 series.*candidates"):
        read_image(study, "t2_tse_tra", "t1")
    with pytest.raises(ImageReadError, match="folder holds 11 series"):
        read_image(study, None, "t1")
    with pytest.raises(ImageReadError, match="repeat a position already taken"):  # stacked b-values
        read_image(study, "DYNDIST_MIX$", "fs")
    with pytest.raises(ImageReadError, match="mixes slice orientations"):  # 3-plane localizer
        read_image(study, "1.3.6.1.4.1.14519.5.2.1.7311.5101.163974556387318814189505775055", "fs")


@pytest.mark.parametrize("patient,study", [("patient01", "study1"), ("patient12", "study2")])
def test_open_ms_t1w_t2w_aligned_in_physical_space(real_data, patient, study):
    """Our physical-space resampling (identity transform in the scanner frame) against
    resampling with the registration transforms shipped with the data."""
    p = real_data / "open_ms" / patient
    t1 = read_image(str(p / f"{study}_T1W.nii.gz"), what="t1").image
    t2 = read_image(str(p / f"{study}_T2W.nii.gz"), what="fs").image
    assert abs(np.asarray(t1.GetDirection()).reshape(3, 3) - np.eye(3)).max() > 0.02  # oblique
    cfg = PreprocessConfig(crop_size=(96, 24, 96), target_spacing_mm=(1.5, 3.0, 1.5))
    res = preprocess_images(t1, t2, Roi(center_mm=_center(t1)), cfg, cfg.target_spacing_mm)
    d = np.asarray(res.crop_direction).reshape(3, 3)
    assert np.allclose(np.sort(np.abs(d.T @ np.asarray(t1.GetDirection()).reshape(3, 3)), 1)[:, -1], 1)  # oblique kept
    ref = sitk.Image([int(v) for v in cfg.crop_size[::-1]], sitk.sitkFloat32)
    ref.SetSpacing(cfg.target_spacing_mm[::-1])
    ref.SetOrigin(res.crop_origin_mm)
    ref.SetDirection(res.crop_direction)
    # ITK registration transforms map fixed (FLAIR) points to moving points: T1 point ->
    # FLAIR point (inverse of T1's) -> T2 point (T2's); CompositeTransform applies the last first.
    to_t1 = sitk.ReadTransform(str(p / f"{study}_T1W_intrastudy_to_FLAIR.txt"))
    to_t2 = sitk.ReadTransform(str(p / f"{study}_T2W_intrastudy_to_FLAIR.txt"))
    t1_to_t2 = sitk.CompositeTransform([to_t2, to_t1.GetInverse()])
    t2n = normalize(t2, cfg, "fs")
    fs = res.pair[1].astype(np.float32)

    def via(tr):
        return sitk.GetArrayFromImage(sitk.Resample(t2n, ref, tr, sitk.sitkLinear, 0.0, sitk.sitkFloat32))

    registered = _corr(fs, via(t1_to_t2))
    assert registered > 0.93
    assert registered > _corr(fs, via(sitk.TranslationTransform(3, (5.0, 0, 0)))) + 0.3
    # the registration moves no point of the crop by more than one 3 mm slice
    corners = [ref.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, 95) for j in (0, 23) for k in (0, 95)]
    assert max(np.linalg.norm(np.subtract(t1_to_t2.TransformPoint(q), q)) for q in corners) < 3.0


def test_enhanced_multiframe_file_is_one_3d_volume(real_data):
    folder = real_data / "dicom_edge" / "xa30_enhanced_multiframe_t1"
    img = read_image(str(folder), what="t1").image  # 4-D (128,128,96,1) squeezed where ITK gives 4-D
    assert img.GetDimension() == 3 and img.GetSize() == (128, 128, 96)
    np.testing.assert_allclose(img.GetSpacing(), (2.0, 2.0, 2.0), atol=1e-4)
    assert np.isfinite(sitk.GetArrayViewFromImage(img)).all()


@pytest.mark.slow
def test_preprocess_real_fixtures_end_to_end(real_data, tmp_path):
    rows = []
    for cid, (folder, sel) in PX.items():
        rows.append(dict(case_id=cid, patient_id=cid, label="1", site="PX", t1=str(real_data / folder), t1_series=sel,
                         fs=str(real_data / folder), fs_series="ADC", roi_center_mm=""))
    for pat in ("patient01", "patient12"):
        for st in ("study1", "study2"):
            p = real_data / "open_ms" / pat
            rows.append(dict(case_id=f"{pat}-{st}", patient_id=pat, label="0", site="MS", t1=str(p / f"{st}_T1W.nii.gz"),
                             fs=str(p / f"{st}_T2W.nii.gz"), t1_series="", fs_series="", roi_center_mm=""))
    mf = str(real_data / "dicom_edge" / "xa30_enhanced_multiframe_t1")
    # the same source as T1 and FS is refused; a second sequence on the same grid stands in
    fs_img = read_image(mf).image
    fs_img = sitk.Cast(sitk.Sqrt(sitk.Abs(fs_img) + 1.0), sitk.sitkFloat32)
    sitk.WriteImage(fs_img, str(tmp_path / "xa30_fs.nii.gz"))
    rows.append(dict(case_id="xa30", patient_id="xa30", label="", site="XA", t1=mf, fs=str(tmp_path / "xa30_fs.nii.gz"),
                     t1_series="", fs_series="", roi_center_mm=""))
    rows.append(dict(case_id="px-ambiguous", patient_id="pa", label="1", site="PX",
                     t1=str(real_data / PX["px0001"][0]), t1_series="t2_tse_tra",
                     fs=str(real_data / PX["px0001"][0]), fs_series="ADC", roi_center_mm=""))
    # the ROI centre: the middle of each T1 (no ROI drawn on these data)
    for r in rows:
        try:
            r["roi_center_mm"] = ",".join(f"{v:.2f}" for v in _center(read_image(r["t1"], r["t1_series"] or None).image))
        except ImageReadError:
            r["roi_center_mm"] = "0,0,0"
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = PreprocessConfig(crop_size=(16, 16, 32), n_folds=2)  # spacing: cohort median from headers
    rep = build_dataset(tmp_path / "manifest.csv", tmp_path / "ds", cfg, address="serial", progress=False)
    assert rep.n_done == 7, rep.failures
    assert [c for c, _ in rep.failures] == ["px-ambiguous"] and "matches 2 series" in rep.failures[0][1]
    idx = read_index(tmp_path / "ds")
    for _, row in idx.iterrows():
        pair = load_pair(tmp_path / "ds", row, verify=True)
        assert pair.shape == (2, 16, 16, 32) and np.isfinite(pair).all()
        assert pair.astype(np.float32).std(axis=(1, 2, 3)).min() > 0.01  # anatomy, not padding
    rep2 = build_dataset(tmp_path / "manifest.csv", tmp_path / "ds", cfg, address="serial", progress=False)
    assert rep2.n_skipped == 7  # DICOM series checksums and NIfTI checksums unchanged

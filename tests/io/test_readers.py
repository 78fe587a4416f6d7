"""Readers: every format keeps spacing/origin/direction; bad files give one-line reasons."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from distmsfa.io import ImageReadError, read_header, read_image, read_label_map
from distmsfa.io.dicom import find_series, select_series
from distmsfa.io.phantom import grid, render, write_dicom_series

OBLIQUE = tuple(sitk.VersorTransform((0.3, 0.2, 1.0), 0.35).GetMatrix())


def _img(size=(20, 16, 8), spacing=(0.7, 0.7, 3.5), direction=OBLIQUE, center=(12.0, -30.0, 55.0)):
    return render(grid(size, spacing, direction, center), "t1", seed=1)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_formats_keep_geometry(tmp_path, suffix):
    img = _img()
    path = str(tmp_path / f"im{suffix}")
    sitk.WriteImage(img, path)
    got = read_image(path, what="t1")
    assert got.image.GetSize() == img.GetSize()
    np.testing.assert_allclose(got.image.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(got.image.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.image.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(img).astype(np.float32))
    assert len(got.sha256) == 64
    h = read_header(path)
    assert h.size_xyz == img.GetSize()
    np.testing.assert_allclose(h.spacing_xyz, img.GetSpacing(), atol=1e-5)


def test_singleton_4th_axis_is_squeezed_with_geometry(tmp_path):
    img = _img()
    arr = sitk.GetArrayFromImage(img)[None]  # (1, z, y, x) -> 4-D (x, y, z, 1)
    im4 = sitk.GetImageFromArray(arr, isVector=False)
    d3 = np.asarray(img.GetDirection()).reshape(3, 3)
    d4 = np.eye(4)
    d4[:3, :3] = d3
    im4.SetDirection(d4.ravel().tolist())
    im4.SetSpacing(list(img.GetSpacing()) + [1.0])
    im4.SetOrigin(list(img.GetOrigin()) + [0.0])
    path = str(tmp_path / "im4.mha")
    sitk.WriteImage(im4, path)
    assert sitk.ReadImage(path).GetDimension() == 4
    got = read_image(path).image
    assert got.GetDimension() == 3 and got.GetSize() == img.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), img.GetDirection(), atol=1e-6)


def test_real_4d_refused(tmp_path):
    im4 = sitk.GetImageFromArray(np.random.rand(3, 6, 7, 8).astype(np.float32), isVector=False)
    path = str(tmp_path / "time.mha")
    sitk.WriteImage(im4, path)
    with pytest.raises(ImageReadError, match="real 4-D"):
        read_image(path, what="fs")


def test_2d_refused(tmp_path):
    path = str(tmp_path / "flat.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(6, 7).astype(np.float32)), path)
    with pytest.raises(ImageReadError, match="2-D"):
        read_image(path)
    one = str(tmp_path / "one.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(1, 6, 7).astype(np.float32)), one)
    with pytest.raises(ImageReadError, match="single slice"):
        read_image(one)


def test_missing_truncated_random_bytes(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(str(tmp_path / "nope.nii.gz"), what="t1")
    good = str(tmp_path / "good.nii.gz")
    sitk.WriteImage(_img(), good)
    data = open(good, "rb").read()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cannot read trunc.nii.gz"):
        read_image(str(trunc), what="t1")
    rnd = tmp_path / "random.nii.gz"
    rnd.write_bytes(gzip.compress(os.urandom(2000)))
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(str(rnd))
    fake = tmp_path / "fake.nii.gz"  # a gzip magic number, then garbage
    fake.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(ImageReadError, match="cannot read fake.nii.gz"):
        read_image(str(fake))
    raw = tmp_path / "random.nii"
    raw.write_bytes(os.urandom(4000))
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(str(raw))


def test_vector_image_refused(tmp_path):
    path = str(tmp_path / "rgb.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 5, 6, 3).astype(np.float32), isVector=True), path)
    with pytest.raises(ImageReadError, match="component"):
        read_image(path)


def test_label_map_keeps_labels(tmp_path):
    g = grid((64, 48, 12), (4.0, 4.0, 8.0))
    path = str(tmp_path / "roi.nii.gz")
    sitk.WriteImage(render(g, "roi"), path)
    lab = read_label_map(path).image
    assert set(np.unique(sitk.GetArrayViewFromImage(lab))) == {0, 1, 2}
    bad = str(tmp_path / "float.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 0.5, np.float32)), bad)
    with pytest.raises(ImageReadError, match="integer labels"):
        read_label_map(bad)


# ---------------------------------------------------------------- DICOM (written by distmsfa.io.phantom)

def test_dicom_round_trip_keeps_positions_in_mm(tmp_path):
    img = _img(size=(24, 20, 9), spacing=(0.8, 0.6, 3.2), direction=OBLIQUE, center=(-40.0, 25.0, 110.0))
    write_dicom_series(img, tmp_path / "study" / "series 1 with spaces", "t1_tse_cor", "1.2.3.4.5.1")
    got = read_image(str(tmp_path / "study"), what="t1").image
    assert got.GetSize() == img.GetSize()
    np.testing.assert_allclose(got.GetSpacing(), img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), img.GetDirection(), atol=1e-5)
    for idx in [(0, 0, 0), (23, 19, 8), (5, 11, 4)]:  # voxel -> mm agrees with the written geometry
        np.testing.assert_allclose(got.TransformIndexToPhysicalPoint(idx), img.TransformIndexToPhysicalPoint(idx), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(img).astype(np.float32))
    h = read_header(str(tmp_path / "study"))
    assert h.size_xyz == img.GetSize()
    np.testing.assert_allclose(h.spacing_xyz, img.GetSpacing(), atol=1e-4)


def test_dicom_study_with_several_series(tmp_path):
    img = _img(size=(16, 12, 6))
    study = tmp_path / "study"
    write_dicom_series(img, study / "3 t1 tse cor", "t1_tse_cor", "1.2.3.4.5.3")
    write_dicom_series(img, study / "4 stir cor", "stir_cor", "1.2.3.4.5.4")
    write_dicom_series(img, study / "nested" / "5 stir cor repeat", "stir_cor", "1.2.3.4.5.5")
    assert {s.uid for s in find_series(str(study))} == {"1.2.3.4.5.3", "1.2.3.4.5.4", "1.2.3.4.5.5"}
    with pytest.raises(ImageReadError, match=r"folder holds 3 series.*fs_series.*1\.2\.3\.4\.5\.3 \(t1_tse_cor"):
        read_image(str(study), what="fs")
    assert select_series(str(study), "T1_TSE").uid == "1.2.3.4.5.3"  # regex, case-insensitive
    with pytest.raises(ImageReadError, match="'stir' matches 2 series"):
        select_series(str(study), "stir", "fs")
    assert select_series(str(study), "1.2.3.4.5.5").uid == "1.2.3.4.5.5"  # exact UID wins
    with pytest.raises(ImageReadError, match="no series .* matches 'flair'"):
        select_series(str(study), "flair", "fs")
    got = read_image(str(study), series="1.2.3.4.5.4", what="fs").image
    assert got.GetSize() == img.GetSize()


def test_dicom_non_uniform_slice_spacing_refused(tmp_path):
    img = _img(size=(16, 12, 8))
    write_dicom_series(img, tmp_path / "gap", "t1", "1.2.3.9", skip=(3,))
    with pytest.raises(ImageReadError, match="non-uniform slice spacing"):
        read_image(str(tmp_path / "gap"), what="t1")

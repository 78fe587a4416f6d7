"""`distmsfa preprocess` with one bad case among good ones: the bad case gets a one-line
error naming it, every good case still lands in the index, exit code stays 0; on the
serial path and on the Ray path (one Ray connection for the module, to the session cluster)."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from distmsfa.cli.preprocess import preprocess
from distmsfa.data.index import read_index
from distmsfa.io.phantom import grid, render, write_case, write_dicom_series

GOOD = ("g1", "g2")


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """This test process connected once to the session cluster; the CLI's build reuses it."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    yield ray_cluster.address
    ray.shutdown()


@pytest.fixture(params=["serial", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])])
def executor(request) -> list[str]:
    """CLI arguments choosing the executor of a bad-input case."""
    if request.param == "serial":
        return ["--serial"]
    return ["--address", request.getfixturevalue("ray_driver")]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    for i, cid in enumerate(GOOD):
        write_case(d, cid, shift_mm=(2.0 * i, 0, 0), seed=i)
    return d


def _row(d, cid, src=None, **over):
    src = src or cid
    row = dict(case_id=cid, patient_id=f"p-{cid}", label="1" if cid.endswith("1") else "0", site="H1",
               t1=str(Path(d) / f"{src}_t1.nii.gz"), fs=str(Path(d) / f"{src}_fs.nii.gz"),
               roi=str(Path(d) / f"{src}_roi.nii.gz"))
    row.update(over)
    return row


def run_cli(tmp_path, good_dir, bad_rows, executor=("--serial",)):
    rows = [_row(good_dir, c) for c in GOOD] + bad_rows
    man = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    app = typer.Typer()
    app.command()(preprocess)
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, [str(man), "--out", str(out), *executor, "--no-progress",
                                   "--crop", "8,16,24", "--spacing", "6,6,6"])
    assert ("(serial)" if "--serial" in executor else "(ray)") in res.output, res.output  # the path asked for
    return res, out


def _check(res, out, case_id, *phrases):
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith(f"error: case {case_id}:")]
    assert len(lines) >= 1, res.output
    for p in phrases:
        assert p in lines[0], lines[0]
    assert "/tmp/" not in lines[0] and os.sep + "root" not in lines[0], lines[0]  # names within the case only
    idx = read_index(out)
    assert set(GOOD) <= set(idx["case_id"]) and case_id not in set(idx["case_id"])
    failed = pd.read_csv(out / "failed.csv")
    assert case_id in set(failed["case_id"])


def _copy_good(good_dir, tmp_path, cid, **replace):
    for w in ("t1", "fs", "roi"):
        shutil.copy(good_dir / f"g1_{w}.nii.gz", tmp_path / f"{cid}_{w}.nii.gz")
    for w, img in replace.items():
        sitk.WriteImage(img, str(tmp_path / f"{cid}_{w}.nii.gz"))


def test_missing_file(tmp_path, good_dir, executor):
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad", t1=str(tmp_path / "gone.nii.gz"))], executor)
    _check(res, out, "bad", "t1 file not found: gone.nii.gz", "row 3")


def test_truncated_nii_gz(tmp_path, good_dir, executor):
    _copy_good(good_dir, tmp_path, "bad")
    data = (tmp_path / "bad_fs.nii.gz").read_bytes()
    (tmp_path / "bad_fs.nii.gz").write_bytes(data[: len(data) // 2])
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad")], executor)
    _check(res, out, "bad", "fs: cannot read bad_fs.nii.gz", "truncated")


def test_random_bytes(tmp_path, good_dir, executor):
    _copy_good(good_dir, tmp_path, "bad")
    (tmp_path / "bad_t1.nii.gz").write_bytes(gzip.compress(os.urandom(5000)))
    (tmp_path / "bad_x.nrrd").write_bytes(os.urandom(5000))
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad"),
                                           _row(tmp_path, "bad2", "bad", fs=str(tmp_path / "bad_x.nrrd"))], executor)
    _check(res, out, "bad", "t1: cannot read bad_t1.nii.gz")
    _check(res, out, "bad2", "cannot read")


def test_2d_image(tmp_path, good_dir, executor):
    _copy_good(good_dir, tmp_path, "bad", fs=sitk.GetImageFromArray(np.random.rand(30, 40).astype(np.float32)))
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad")], executor)
    _check(res, out, "bad", "fs: 2-D image")


def test_real_4d_image(tmp_path, good_dir, executor):
    _copy_good(good_dir, tmp_path, "bad")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(3, 8, 9, 10).astype(np.float32), isVector=False),
                    str(tmp_path / "bad_t1.mha"))
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad", t1=str(tmp_path / "bad_t1.mha"))], executor)
    _check(res, out, "bad", "t1: real 4-D image")


def test_nan_inf_voxels(tmp_path, good_dir, executor):
    fs = sitk.Cast(sitk.ReadImage(str(good_dir / "g1_fs.nii.gz")), sitk.sitkFloat32)
    a = sitk.GetArrayFromImage(fs)
    a[1, 2, 3], a[2, 3, 4] = np.nan, np.inf
    bad = sitk.GetImageFromArray(a)
    bad.CopyInformation(fs)
    _copy_good(good_dir, tmp_path, "bad", fs=bad)
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad")], executor)
    _check(res, out, "bad", "fs: 2 NaN/Inf voxels")


def test_constant_image(tmp_path, good_dir, executor):
    t1 = sitk.ReadImage(str(good_dir / "g1_t1.nii.gz"))
    _copy_good(good_dir, tmp_path, "bad", t1=t1 * 0 + 5)
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad")], executor)
    _check(res, out, "bad", "t1: constant image")


def test_no_physical_overlap(tmp_path, good_dir, executor):
    fs = sitk.ReadImage(str(good_dir / "g1_fs.nii.gz"))
    fs.SetOrigin((np.asarray(fs.GetOrigin()) + [0, 0, 1500]).tolist())
    _copy_good(good_dir, tmp_path, "bad", fs=fs)
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad")], executor)
    _check(res, out, "bad", "no physical overlap")


def test_empty_roi(tmp_path, good_dir, executor):
    roi = sitk.ReadImage(str(good_dir / "g1_roi.nii.gz"))
    _copy_good(good_dir, tmp_path, "bad", roi=roi * 0)
    res, out = run_cli(tmp_path, good_dir, [_row(tmp_path, "bad")], executor)
    _check(res, out, "bad", "roi: label map is empty")


def test_roi_outside_image(tmp_path, good_dir, executor):
    roi = sitk.ReadImage(str(good_dir / "g1_roi.nii.gz"))
    roi.SetOrigin((np.asarray(roi.GetOrigin()) + [800, 0, 0]).tolist())
    _copy_good(good_dir, tmp_path, "bad", roi=roi)
    res, out = run_cli(tmp_path, good_dir, [
        _row(tmp_path, "bad"),
        _row(tmp_path, "bad2", "bad", roi="", roi_center_mm="0,0,900"),
    ], executor)
    _check(res, out, "bad", "lies outside the t1 image")
    _check(res, out, "bad2", "lies outside the t1 image")


def test_duplicate_case_id(tmp_path, good_dir, executor):
    res, out = run_cli(tmp_path, good_dir, [_row(good_dir, "dup", "g1"), _row(good_dir, "dup", "g2")], executor)
    _check(res, out, "dup", "duplicate case_id 'dup' (2 rows)")
    assert sum(ln.startswith("error: case dup:") for ln in res.output.splitlines()) == 2


def test_unknown_label(tmp_path, good_dir, executor):
    res, out = run_cli(tmp_path, good_dir, [_row(good_dir, "bad", "g1", label="axspa?")], executor)
    _check(res, out, "bad", "unknown label 'axspa?'", "use 1 (axSpA), 0 (non-axSpA) or empty")


def test_dicom_folder_with_several_series_and_no_selector(tmp_path, good_dir, executor):
    img = render(grid((32, 24, 8), (8.0, 8.0, 12.0)), "t1")
    write_dicom_series(img, tmp_path / "study" / "2 t1 cor", "t1_tse_cor", "1.2.3.7.1")
    write_dicom_series(img, tmp_path / "study" / "3 t1 cor fs", "t1_tse_cor_fs", "1.2.3.7.2")
    res, out = run_cli(tmp_path, good_dir, [
        _row(good_dir, "bad", "g1", t1=str(tmp_path / "study")),
        _row(good_dir, "ok_sel", "g1", t1=str(tmp_path / "study"), t1_series="1.2.3.7.1"),
    ], executor)
    _check(res, out, "bad", "t1: folder holds 2 series", "t1_series", "1.2.3.7.1 (t1_tse_cor, 8 files)",
           "1.2.3.7.2 (t1_tse_cor_fs, 8 files)")
    assert "ok_sel" in set(read_index(out)["case_id"])  # the same folder with a selector works


def test_every_case_failing_exits_1_and_broken_manifest_exits_2(tmp_path, good_dir):
    man = tmp_path / "m.csv"
    pd.DataFrame([_row(good_dir, "x", label="7")]).to_csv(man, index=False)
    app = typer.Typer()
    app.command()(preprocess)
    res = CliRunner().invoke(app, [str(man), "--out", str(tmp_path / "o"), "--serial", "--spacing", "6,6,6"])
    assert res.exit_code == 1 and "error: case x: manifest row 1: unknown label" in res.output
    pd.DataFrame([dict(case_id="x", t1="a", fs="b")]).to_csv(man, index=False)
    res = CliRunner().invoke(app, [str(man), "--out", str(tmp_path / "o"), "--serial"])
    assert res.exit_code == 2 and "error: manifest: missing required column 'patient_id'" in res.output
    res = CliRunner().invoke(app, [str(man), "--out", str(tmp_path / "o"), "--serial", "--crop", "1,2"])
    assert res.exit_code == 2 and "--crop needs three" in res.output


def test_yaml_config_and_bad_key(tmp_path, good_dir):
    man = tmp_path / "m.csv"
    pd.DataFrame([_row(good_dir, c) for c in GOOD]).to_csv(man, index=False)
    cfg = tmp_path / "pre.yaml"
    cfg.write_text("preprocess:\n  crop_size: [8, 16, 24]\n  target_spacing_mm: [6, 6, 6]\n  n_folds: 2\n")
    app = typer.Typer()
    app.command()(preprocess)
    res = CliRunner().invoke(app, [str(man), "--out", str(tmp_path / "o"), "--serial", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert list(read_index(tmp_path / "o")["shape"].iloc[0]) == [2, 8, 16, 24]
    cfg.write_text("crop_sise: [8, 16, 24]\n")
    res = CliRunner().invoke(app, [str(man), "--out", str(tmp_path / "o2"), "--serial", "--config", str(cfg)])
    assert res.exit_code == 2 and "did you mean 'crop_size'" in res.output

"""`preprocess --localiser`: cases without an ROI are cropped around the predicted joints."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from distmsfa.data import PreprocessConfig, build_dataset
from distmsfa.data.index import load_array, read_index

CFG = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2)


def _crop_centre(row) -> np.ndarray:
    d = np.asarray(row["crop_direction"], float).reshape(3, 3)
    size_xyz = np.asarray(row["shape"][1:], float)[::-1]
    sp_xyz = np.asarray(row["spacing_mm"], float)[::-1]
    return np.asarray(row["crop_origin_mm"], float) + d @ ((size_xyz - 1) / 2 * sp_xyz)


def _noise_case(folder, like_dir):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for seq in ("t1", "fs"):
        img = sitk.ReadImage(str(like_dir / f"{seq}.nii.gz"))
        noise = sitk.GetImageFromArray(rng.normal(300, 30, sitk.GetArrayViewFromImage(img).shape).astype(np.int16))
        noise.CopyInformation(img)
        sitk.WriteImage(noise, str(folder / f"{seq}.nii.gz"))


@pytest.mark.slow
def test_preprocess_centres_crops_on_predicted_joints(trained, cohort, tmp_path):
    folder, _, held_out = trained
    m = pd.read_csv(cohort)
    ids = [c.case_id for c in held_out]
    m = m[m["case_id"].isin(ids + [m["case_id"].iloc[0]])].copy()
    m["t1"] = [str(cohort.parent / p) for p in m["t1"]]
    m["fs"] = [str(cohort.parent / p) for p in m["fs"]]
    m["roi"] = [str(cohort.parent / p) if cid not in ids else "" for p, cid in zip(m["roi"], m["case_id"])]
    _noise_case(tmp_path / "noise", cohort.parent / "cases" / ids[0])
    m = pd.concat([m, pd.DataFrame([{"case_id": "NOISE1", "patient_id": "PN", "label": 0, "site": "TAH",
                                     "t1": str(tmp_path / "noise/t1.nii.gz"), "fs": str(tmp_path / "noise/fs.nii.gz"),
                                     "roi": ""}])])
    man = tmp_path / "manifest.csv"
    m[["case_id", "patient_id", "label", "site", "t1", "fs", "roi"]].to_csv(man, index=False)

    # without a localiser, an empty roi cell is a per-case error (as before)
    rep0 = build_dataset(man, tmp_path / "ds0", CFG, address="serial", progress=False)
    assert sorted(c for c, _ in rep0.failures) == sorted(ids + ["NOISE1"])

    rep = build_dataset(man, tmp_path / "ds", CFG, address="serial", progress=False, localiser=folder)
    assert [c for c, _ in rep.failures] == ["NOISE1"], rep.failures
    assert "roi: no plausible sacroiliac joints predicted" in rep.failures[0][1]
    idx = read_index(tmp_path / "ds").set_index("case_id")
    assert (idx.loc[ids, "roi_source"] == "predicted").all()
    assert (idx.drop(index=ids)["roi_source"] == "given").all()
    for case in held_out:
        row = idx.loc[case.case_id]
        err = np.linalg.norm(_crop_centre(row) - case.centroids_mm["roi"])
        assert err < 12, (case.case_id, err)
        roi = load_array(tmp_path / "ds", row["roi_path"])
        assert {1, 2} <= set(np.unique(roi))
        pred = json.loads(row["roi_prediction"])
        lab = sitk.ReadImage(str(tmp_path / "ds" / pred["path"]))
        assert set(np.unique(sitk.GetArrayViewFromImage(lab))) == {0, 1, 2}
    # resuming: unchanged sources and the same localiser -> nothing is redone
    rep2 = build_dataset(man, tmp_path / "ds", CFG, address="serial", progress=False, localiser=folder)
    assert rep2.n_skipped == len(ids) + 1 and rep2.n_done == 0


def test_preprocess_cli_refuses_a_missing_localiser(tmp_path):
    from distmsfa.cli.main import app

    man = tmp_path / "m.csv"
    man.write_text("case_id,patient_id,label,t1,fs,roi\nA,P,1,a.nii.gz,b.nii.gz,\n")
    res = CliRunner().invoke(app, ["preprocess", str(man), "--out", str(tmp_path / "ds"), "--serial",
                                   "--localiser", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no localiser.json" in res.output and res.output.count("\n") == 1

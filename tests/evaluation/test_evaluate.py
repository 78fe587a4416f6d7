"""`distmsfa evaluate`: a bundle of a tiny run scores the external site as the CV run's fold
ensemble did; metrics with CIs, figures, and refusal of a differently preprocessed dataset."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from distmsfa.evaluation.evaluate import EvaluateError, evaluate_bundle
from distmsfa.evaluation.figures import png_is_not_blank

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(two_runs, tmp_path_factory):
    from distmsfa.bundle import export_bundle

    return export_bundle(two_runs[0], tmp_path_factory.mktemp("b") / "bundle")


def test_external_predictions_equal_the_cv_runs_fold_ensemble(bundle, two_runs, tiny_data, tmp_path):
    res = evaluate_bundle(bundle, tiny_data, "external", tmp_path / "ev", n_boot=200)
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv", dtype={"case_id": str})
    cv_ext = pd.read_csv(two_runs[0] / "external_predictions.csv", dtype={"case_id": str})
    assert list(pred["case_id"]) == list(cv_ext["case_id"])
    np.testing.assert_allclose(pred["prob"], cv_ext["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred["prob"], pred[["prob_fold0", "prob_fold1"]].mean(axis=1), rtol=1e-6)
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert m["split"] == "external" and m["n_labelled"] == 6 and "DeLong" in m["ci"]
    for k in ("auc", "acc", "sen", "spec", "f1", "brier"):
        v = m["metrics"][k]
        assert v["lo"] <= v["value"] <= v["hi"], k
    assert (pred["pred"] == (pred["prob"] >= m["threshold"]).astype(int)).all()
    for name in ("roc.png", "calibration.png"):
        assert png_is_not_blank(tmp_path / "ev" / name)
    assert (tmp_path / "ev" / "roc.svg").exists() and (tmp_path / "ev" / "calibration.svg").exists()
    assert res.warnings == []
    internal = evaluate_bundle(bundle, tiny_data, "internal", tmp_path / "in", n_boot=50)
    assert any("trained the bundle" in w for w in internal.warnings)


def _app():
    from distmsfa.cli.evaluate import evaluate as cmd

    app = typer.Typer()
    app.command("evaluate")(cmd)
    app.command("noop")(lambda: None)
    return app


def test_a_differently_preprocessed_dataset_is_refused_naming_the_difference(bundle, tiny_data, tmp_path):
    from tests.evaluation.conftest import write_fingerprint

    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    write_fingerprint(other, clip=(1.0, 99.0))
    with pytest.raises(EvaluateError, match="clip_percentiles"):
        evaluate_bundle(bundle, other, "external", tmp_path / "x")
    r = CliRunner().invoke(_app(), ["evaluate", "--bundle", str(bundle), "--data", str(other), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "clip_percentiles" in r.output and r.output.strip().count("\n") == 0
    r = CliRunner().invoke(_app(), ["evaluate", "--bundle", str(bundle), "--data", str(tiny_data), "--split", "train",
                                    "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--split" in r.output


def _halves_roi(shape) -> np.ndarray:
    """Left joint (1) = the crop's high-W half (patient left in LIP), right joint (2) = the low-W half,
    with a band between them outside both."""
    roi = np.zeros(shape, np.uint8)
    w = shape[-1]
    roi[..., w // 2 + 2:] = 1
    roi[..., : w // 2 - 2] = 2
    return roi


def test_joint_evidence_columns_split_each_branchs_gradcam_by_the_crop_roi(bundle, tiny_data, tmp_path):
    """--joint-evidence: per case and branch, the share of the ensemble's Grad-CAM energy in the
    left / right masks of rois/<case>.npy, computed here independently from the maps; a case whose
    ROI has no joint labels gets empty cells."""
    from distmsfa.bundle import load_bundle
    from distmsfa.data.index import load_pair, read_index, save_array

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    idx = read_index(data)
    ext = idx[idx["is_external"].astype(bool)].sort_values("case_id")
    roi = _halves_roi(tuple(ext.iloc[0]["shape"])[-3:])
    for cid in ext["case_id"].iloc[1:]:
        save_array(data, f"rois/{cid}.npy", roi)
    evaluate_bundle(bundle, data, "external", tmp_path / "ev", n_boot=20, joint_evidence=True)
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
    assert (pred["roi_source"] == "given").all()
    p = load_bundle(bundle, device="cpu")
    x = np.stack([load_pair(data, r) for r in ext.to_dict("records")]).astype(np.float32)
    maps = p.gradcam(x)
    w = x.shape[-1]
    checked = 0
    for i, cid in enumerate(ext["case_id"]):
        for b, m in maps.items():
            left, right = pred.loc[cid, f"evidence_{b}_left"], pred.loc[cid, f"evidence_{b}_right"]
            if i == 0:  # its ROI is all zero: no joints, no shares
                assert np.isnan(left) and np.isnan(right)
                continue
            tot = m[i].sum()
            if tot == 0:  # an all-zero map (the 2-epoch model has some): zero shares
                assert left == right == 0.0
                continue
            checked += 1
            assert left == pytest.approx(m[i][..., w // 2 + 2:].sum() / tot, abs=2e-4)
            assert right == pytest.approx(m[i][..., : w // 2 - 2].sum() / tot, abs=2e-4)
            assert 0 <= left <= 1 and 0 <= right <= 1 and left + right <= 1 + 1e-3
    assert checked >= 3, "too few non-zero Grad-CAM maps to check the split"

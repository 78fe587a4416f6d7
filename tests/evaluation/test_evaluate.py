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

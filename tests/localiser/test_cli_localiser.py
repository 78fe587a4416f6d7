"""`distmsfa localiser train`: CV on the classification folds, metrics JSON + table, a saved localiser."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from distmsfa.cli.main import app


@pytest.mark.slow
def test_localiser_train_cli_cross_validates_on_dataset_folds(cohort, tiny_cfg, tmp_path):
    from distmsfa.data import PreprocessConfig, build_dataset

    # the classification dataset's folds (2 folds) are the ones the localiser uses
    ds = tmp_path / "ds"
    build_dataset(cohort, ds, PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2),
                  address="serial", progress=False, external_sites=["NHH"])
    cfg = tmp_path / "loc.yaml"
    cfg.write_text(yaml.safe_dump({"localiser": tiny_cfg.to_dict(), "train": {"batch_size": 4, "lr": 0.01}}))
    out = tmp_path / "L"
    res = CliRunner().invoke(app, ["localiser", "train", "--data", str(ds), "--manifest", str(cohort), "--out", str(out),
                                   "--epochs", "1", "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "cv_metrics.json").read_text(encoding="utf-8"))
    assert m["fold_source"] == "folds.parquet" and sorted(m["folds"]) == ["0", "1"]
    for s in m["folds"].values():
        assert {"dice_left", "dice_right", "err_left_mm", "err_right_mm", "err_roi_mm", "err_centre_baseline_mm"} <= set(s)
    folds = pd.read_parquet(ds / "folds.parquet").set_index("case_id")
    cases = pd.read_csv(out / "cv_cases.csv")
    oof = cases[cases["fold"] != "external"]
    assert (oof["fold"].astype(int).to_numpy() == folds.loc[oof["case_id"], "fold"].astype(int).to_numpy()).all()
    ext = cases[cases["fold"] == "external"]
    assert len(ext) and set(ext["site"]) == {"NHH"} and m["external"]["n"] == len(ext)
    assert "| fold 0 |" in res.output and "centre-of-image baseline" in res.output
    meta = json.loads((out / "localiser.json").read_text(encoding="utf-8"))
    assert meta["cv"]["pooled"]["n"] == len(oof) and meta["train"]["n_cases"] == m["n_train_final"]


def test_localiser_train_cli_needs_the_manifest_for_a_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "folds.parquet").write_bytes(b"")
    res = CliRunner().invoke(app, ["localiser", "train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "L")])
    assert res.exit_code == 2 and "--manifest" in res.output

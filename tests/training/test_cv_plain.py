"""`distmsfa cv --plain` end to end on the synthetic cohort (built by build_dataset): the run
folder's layout, folds (no patient in two, external site in none), resume, errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from distmsfa.cli.cv import cv
from distmsfa.data.index import read_index

pytestmark = pytest.mark.slow


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("cv")(cv)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the subcommand name
    return app


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "two_epochs.yaml"
    p.write_text(yaml.safe_dump({"train": {"epochs": 2, "num_threads": 1, "threshold": "youden"}}))
    return p


def test_folds_group_patients_and_exclude_the_external_site(synthetic_dataset):
    idx = read_index(synthetic_dataset)
    ext = idx[idx["is_external"]]
    assert len(ext) > 0 and ext["fold"].isna().all() and set(ext["site"]) == {"NHH"}
    inner = idx[~idx["is_external"]]
    assert inner["fold"].notna().all() and inner["fold"].nunique() == 2
    assert (inner.groupby("patient_id")["fold"].nunique() == 1).all()


def test_cli_plain_run_writes_the_documented_layout(synthetic_dataset, cfg_file, tmp_path):
    run = tmp_path / "run"
    args = ["cv", "--data", str(synthetic_dataset), "--model", "msfanet", "--profile", "cpu",
            "--config", str(cfg_file), "--out", str(run), "--plain"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert "mean ± std" in res.output and "AUC" in res.output

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["threshold_policy"] == "youden" and 0 < summary["threshold"] <= 1
    assert set(summary["folds"]) == {"0", "1"} and summary["folds_done"] == [0, 1]
    for k in ("auc", "acc", "sen", "spec", "f1"):
        assert k in summary["mean"] and k in summary["std"]

    idx = read_index(synthetic_dataset)
    inner = idx[~idx["is_external"]]
    oof = pd.read_csv(run / "oof_predictions.csv", dtype={"case_id": str})
    assert oof.equals(pd.read_parquet(run / "oof_predictions.parquet")[oof.columns].astype(oof.dtypes.to_dict()))
    assert {"case_id", "fold", "label", "prob", "prob_fuse", "prob_t1", "prob_fs"} <= set(oof.columns)
    assert sorted(oof["case_id"]) == sorted(inner["case_id"])  # every inner case once, no external case
    merged = oof.merge(inner[["case_id", "fold", "label"]], on="case_id", suffixes=("", "_idx"))
    assert (merged["fold"] == merged["fold_idx"]).all() and (merged["label"] == merged["label_idx"]).all()

    assert (run / "learning_curves.png").stat().st_size > 10_000
    for f in (0, 1):
        d = run / "folds" / f"fold{f}"
        for name in ("best.pt", "last.pt", "history.csv", "predictions.csv", "result.json", "metrics.jsonl"):
            assert (d / name).exists(), name
        hist = pd.read_csv(d / "history.csv")
        assert list(hist["epoch"]) == [0, 1]
        assert {"val_auc", "val_acc", "val_sen", "val_spec", "val_f1", "val_loss", "train_loss", "lr",
                "epoch_time_s", "train_w_fuse", "train_w_t1", "train_w_fs"} <= set(hist.columns)

    again = CliRunner().invoke(_app(), args)
    assert again.exit_code == 2 and "--resume" in again.output
    # everything done: --resume retrains nothing (every fold file untouched: same bytes, same
    # mtime) and summarises again to the same results
    folds_before = _snapshot(run / "folds")
    results_before = {n: (run / n).read_bytes() for n in ("summary.json", "oof_predictions.csv")}
    resumed = CliRunner().invoke(_app(), args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _snapshot(run / "folds") == folds_before
    assert {n: (run / n).read_bytes() for n in results_before} == results_before


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_errors_are_one_line(synthetic_dataset, tmp_path):
    app = _app()
    r = CliRunner().invoke(app, ["cv", "--data", str(synthetic_dataset), "--model", "msfanett", "--plain"])
    assert r.exit_code == 2 and "did you mean msfanet" in r.output
    r = CliRunner().invoke(app, ["cv", "--data", str(synthetic_dataset), "--model", "msfanet", "--folds", "0,7",
                                 "--plain", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "fold(s) [7] not in the dataset" in r.output
    r = CliRunner().invoke(app, ["cv", "--data", str(tmp_path / "none"), "--model", "msfanet", "--plain"])
    assert r.exit_code == 2 and "distmsfa preprocess" in r.output
    r = CliRunner().invoke(app, ["cv", "--data", str(synthetic_dataset), "--model", "msfanet", "--resume"])
    assert r.exit_code == 2 and "--resume needs --out" in r.output
    r = CliRunner().invoke(app, ["cv", "--data", str(synthetic_dataset), "--model", "msfanet", "--plain",
                                 "--compile", "sometimes", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "compile='sometimes'" in r.output and len(r.output.strip().splitlines()) == 1

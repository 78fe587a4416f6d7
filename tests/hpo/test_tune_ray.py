"""`distmsfa tune` on a real local Ray cluster with the tiny dataset: a study that writes its
files (trials, plots, best.yaml re-runnable by run_cv) and records a refused combination as a
failed trial; ASHA stopping a hopeless trial and its folds' resources coming back."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _study(tmp_path: Path, epochs: int, search: dict, tune: dict, **train) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "train": {"model_cfg": {"preset": "tiny"}, "epochs": epochs, "batch_size": 4, "lr": 1e-3, "precision": "fp32",
                  "num_threads": 1, "seed": 0, **train},
        "cv": {"cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 0},
        "search": search,
        "tune": {"seed": 0, "trial_cpus": 0.5, **tune},
    }))
    return path


def test_study_writes_trials_plots_best_yaml_and_records_a_refused_trial(tiny_dataset, ray_conn, tmp_path):
    from distmsfa.hpo.runner import tune_study
    from distmsfa.training import run_cv

    cfg = _study(tmp_path, 2, {"train.lr": {"loguniform": [1e-3, 1e-2]}, "model.attn_heads": {"choice": [1, 3]}},
                 {"num_samples": 2, "scheduler": "none",
                  # the second point is one the model refuses: tiny attn_dim 16 is not a multiple of 3 heads
                  "points_to_evaluate": [{"train.lr": 3e-3, "model.attn_heads": 1}, {"model.attn_heads": 3}]})
    res = tune_study(tiny_dataset, tmp_path / "s", cfg, profile="cpu", progress=False)
    s = tmp_path / "s"
    csv = pd.read_csv(s / "trials.csv")
    assert len(csv) == 2 and len(pd.read_parquet(s / "trials.parquet")) == 2
    ok, bad = csv.iloc[0], csv.iloc[1]
    assert ok["status"] == "COMPLETE" and ok["epochs_run"] == 2 and ok["train.lr"] == pytest.approx(3e-3)
    assert bad["status"] == "ERROR" and "must be a positive multiple of attn_heads (3)" in bad["error"]
    # the objective is the smoothed fold mean of what the folds recorded
    hist = {f: pd.read_csv(Path(ok["run_dir"]) / "folds" / f"fold{f}" / "history.csv") for f in (0, 1)}
    curve = [np.mean([hist[f]["val_auc"].iloc[e] for f in (0, 1)]) for e in (0, 1)]
    assert ok["objective"] == pytest.approx(np.mean(curve))
    assert ok["fold0_auc"] == pytest.approx(hist[0]["val_auc"].iloc[1])
    for name in ("optimization_history", "parallel_coordinate", "intermediate_values"):
        assert (s / "plots" / f"{name}.png").stat().st_size > 1000, res.plots
    # best.yaml is a config `distmsfa cv --config` takes; re-running it gives the trial's metrics
    best = yaml.safe_load((s / "best.yaml").read_text())
    assert best["train"]["model"] == "msfanet" and best["train"]["lr"] == pytest.approx(3e-3)
    # the best trial leaves as a bundle that verifies and carries its fold models
    from distmsfa.bundle import load_bundle, verify_bundle

    meta = verify_bundle(s / "bundle")
    assert meta["folds"] == [0, 1] and res.bundle == s / "bundle"
    assert meta["train"]["lr"] == pytest.approx(3e-3)
    x = np.zeros((1, 2, 8, 32, 32), np.float32)
    assert load_bundle(s / "bundle").predict(x)["fold_probs"].shape == (1, 2)
    rerun = run_cv(tiny_dataset, best["train"]["model"], s / "best.yaml", out=tmp_path / "rerun", plain=True, progress=False)
    for f in (0, 1):
        np.testing.assert_allclose(rerun.histories[f]["val_auc"], hist[f]["val_auc"], rtol=1e-5, atol=1e-6)


def test_asha_stops_a_hopeless_trial_and_its_folds_resources_come_back(tiny48_dataset, ray_conn, tmp_path):
    import ray

    from distmsfa.hpo.runner import tune_study

    epochs = 4
    # seed 0, no augmentation: lr 3e-2 reaches fold-mean val AUC ~0.7 after epoch 1 on this
    # dataset, lr 1e-9 stays near 0.4 (the CPU path is deterministic)
    cfg = _study(tmp_path, epochs, {"train.lr": {"loguniform": [1e-9, 3e-2]}},
                 {"num_samples": 2, "max_concurrent_trials": 1, "scheduler": "asha", "grace_period": 1,
                  "reduction_factor": 2, "rank_by": "last",
                  "points_to_evaluate": [{"train.lr": 3e-2}, {"train.lr": 1e-9}]}, augment={"enabled": False})
    free_before = ray.available_resources().get("CPU", 0)
    res = tune_study(tiny48_dataset, tmp_path / "s", cfg, profile="cpu", progress=False, bundle=False)
    t = res.trials.set_index("train.lr")
    good, bad = t.loc[3e-2], t.loc[1e-9]
    assert good["status"] == "COMPLETE" and good["epochs_run"] == epochs
    assert bad["status"] == "STOPPED" and bad["epochs_run"] < epochs, res.trials.to_string()
    # the stopped trial's folds did not finish their schedule
    for f in (0, 1):
        log = Path(bad["run_dir"]) / "folds" / f"fold{f}" / "metrics.jsonl"
        # a fold stopped right after its first report may not have logged that epoch yet
        assert (len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0) < epochs
    # Optuna was told the stopped trial as PRUNED (not COMPLETE with its early value)
    import pickle

    states = sorted((tmp_path / "s" / "tune").glob("searcher-state-*.pkl"))
    assert states, list((tmp_path / "s" / "tune").iterdir())
    with open(states[-1], "rb") as fh:
        ot_study = pickle.load(fh)["_ot_study"]
    by_lr = {t.params["train.lr"]: t.state.name for t in ot_study.trials}
    assert len(by_lr) == 2 and by_lr[min(by_lr)] == "PRUNED" and by_lr[max(by_lr)] == "COMPLETE", by_lr
    # every placement group of the study's fold trainers is removed, and the CPUs are free again
    deadline = time.time() + 60
    while time.time() < deadline:
        live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] not in ("REMOVED",)]
        if not live and ray.available_resources().get("CPU", 0) >= free_before - 1e-6:
            break
        time.sleep(1)
    assert not live, live
    assert ray.available_resources().get("CPU", 0) >= free_before - 1e-6

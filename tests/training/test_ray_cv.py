"""Cross-validation through Ray Data + Ray Train V2 on a real local cluster: end to end on the
synthetic cohort, same metrics as the plain loop, resume after a worker kill and a driver kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from distmsfa.training import run_cv

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COMPARE = ("train_loss", "val_loss", "val_auc", "val_acc", "val_sen", "val_spec", "val_f1", "train_w_fuse",
           "inner_auc", "inner_loss")


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _timeline(fold_dir: Path) -> dict[str, float]:
    return {e["event"]: e["t"] for e in _lines(fold_dir / "timeline.jsonl")}


def test_ray_cv_end_to_end_gives_the_plain_loops_metrics(synthetic_dataset, ray_conn, tmp_path):
    ov = {"epochs": 2, "num_threads": 1}
    plain = run_cv(synthetic_dataset, "msfanet", profile="cpu", out=tmp_path / "plain", plain=True, overrides=ov,
                   progress=False)
    seen = []
    res = run_cv(synthetic_dataset, "msfanet", profile="cpu", out=tmp_path / "ray", overrides=ov, progress=False,
                 on_epoch=lambda e, mon: seen.append((int(e["fold"]), int(e["epoch"]), mon.fold_mean("val_auc", int(e["epoch"])))))
    run = tmp_path / "ray"
    # every epoch of every fold reached the driver while the run went on; the fold mean is
    # defined once both folds reported that epoch (what an HPO trial reports)
    assert sorted((f, e) for f, e, _ in seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    final_mean = [m for f, e, m in seen if e == 1 and m is not None]
    assert final_mean and final_mean[-1] == pytest.approx(
        np.mean([res.histories[f]["val_auc"].iloc[1] for f in (0, 1)]), nan_ok=True)
    # same seed -> same batches, augmentation and metrics on either transport
    for f in (0, 1):
        hp, hr = plain.histories[f], res.histories[f]
        for k in COMPARE:
            np.testing.assert_allclose(hr[k], hp[k], rtol=1e-5, atol=1e-6, err_msg=f"fold {f} {k}")
    a = plain.oof.sort_values("case_id").reset_index(drop=True)
    b = res.oof.sort_values("case_id").reset_index(drop=True)
    assert list(a["case_id"]) == list(b["case_id"])
    np.testing.assert_allclose(b["prob"], a["prob"], rtol=1e-5, atol=1e-6)
    assert res.summary["mean"] == pytest.approx(plain.summary["mean"], nan_ok=True)
    # the inner selection split and the external site: same partition, same predictions
    assert res.summary["estimates"]["best_val"]["mean"] == pytest.approx(plain.summary["estimates"]["best_val"]["mean"],
                                                                         nan_ok=True)
    ep, er = (pd.read_csv(d / "external_predictions.csv", dtype={"case_id": str}) for d in (tmp_path / "plain", run))
    assert list(ep["case_id"]) == list(er["case_id"]) and len(ep) > 0
    np.testing.assert_allclose(er["prob"], ep["prob"], rtol=1e-5, atol=1e-6)
    # Ray Train kept its last checkpoint per fold; the folds ran at the same time
    assert list((run / "ray" / "fold0").glob("checkpoint_epoch0001"))
    t0, t1 = _timeline(run / "folds" / "fold0"), _timeline(run / "folds" / "fold1")
    assert t0["first_batch"] < (run / "folds" / "fold1" / "result.json").stat().st_mtime
    assert t1["first_batch"] < (run / "folds" / "fold0" / "result.json").stat().st_mtime
    assert (run / "learning_curves.png").exists() and (run / "summary.json").exists()


def test_killed_worker_resumes_its_fold_from_its_checkpoint(synthetic_dataset, ray_conn, tmp_path):
    run = tmp_path / "run"
    fold_dir = run / "folds" / "fold0"
    killed: dict = {}

    def killer() -> None:
        deadline = time.time() + 480  # generous: Train workers start slowly on a loaded 2-core machine
        while time.time() < deadline:
            done = _lines(fold_dir / "metrics.jsonl")
            if done:
                pid = int((fold_dir / "worker_pids.txt").read_text(encoding="utf-8").split()[-1])
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, epochs_done=len(done))
                return
            time.sleep(0.01)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    ov = {"epochs": 5, "num_threads": 1}
    res = run_cv(synthetic_dataset, "msfanet", profile="cpu", folds=[0], out=run, overrides=ov, progress=False)
    th.join(5)
    assert killed, "the worker was never seen reporting an epoch"
    pids = [int(p) for p in (fold_dir / "worker_pids.txt").read_text(encoding="utf-8").split()]
    assert killed["pid"] in pids and len(set(pids)) == 2  # Ray Train started a new worker
    result = json.loads((fold_dir / "result.json").read_text(encoding="utf-8"))
    # restarted from the last checkpoint committed before the kill (an epoch is written to
    # metrics.jsonl only after its checkpoint is committed), not from epoch 0 or an older one
    resumed = result["resumed_epochs"]
    assert len(resumed) == 1 and resumed[0] >= killed["epochs_done"] - 1, (resumed, killed)
    log = pd.DataFrame(_lines(fold_dir / "metrics.jsonl"))
    assert (log.loc[log["epoch"] <= resumed[0], "epoch"].value_counts() == 1).all()  # none trained again
    assert list(res.histories[0]["epoch"]) == [0, 1, 2, 3, 4]
    # and the interrupted run is the uninterrupted one
    ref = run_cv(synthetic_dataset, "msfanet", profile="cpu", folds=[0], out=tmp_path / "ref", plain=True,
                 overrides=ov, progress=False)
    for k in COMPARE:
        np.testing.assert_allclose(res.histories[0][k], ref.histories[0][k], rtol=1e-5, atol=1e-6, err_msg=k)


CLI = "import typer; from distmsfa.cli.cv import cv; app = typer.Typer(); app.command()(cv); app()"


def test_killed_driver_run_continues_with_resume(synthetic_dataset, ray_cluster, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"epochs": 4, "num_threads": 1}}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", CLI, "--data", str(synthetic_dataset), "--model", "msfanet", "--profile", "cpu",
           "--config", str(cfg), "--out", str(run), "--address", ray_cluster.address]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.time() + 480  # generous: Train workers start slowly on a loaded 2-core machine
        while time.time() < deadline and proc.poll() is None:
            if any(_lines(run / "folds" / f"fold{f}" / "metrics.jsonl") for f in (0, 1)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "first.log").read_text(encoding="utf-8")[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not (run / "summary.json").exists()
    old = [int(p) for f in (0, 1) if (run / "folds" / f"fold{f}" / "worker_pids.txt").exists()
           for p in (run / "folds" / f"fold{f}" / "worker_pids.txt").read_text(encoding="utf-8").split()]
    deadline = time.time() + 60  # Ray tears down the dead driver's controllers and workers
    while time.time() < deadline and any(psutil.pid_exists(p) for p in old):
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) for p in old), "the killed driver's Train workers are still running"
    before = {f: len(_lines(run / "folds" / f"fold{f}" / "metrics.jsonl")) for f in (0, 1)}

    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=400, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["folds_done"] == [0, 1]
    resumed = []
    for f in (0, 1):
        fold_dir = run / "folds" / f"fold{f}"
        result = json.loads((fold_dir / "result.json").read_text(encoding="utf-8"))
        assert result["epochs_run"] == 4
        log = pd.DataFrame(_lines(fold_dir / "metrics.jsonl"))
        assert sorted(log["epoch"].unique()) == [0, 1, 2, 3]
        if before[f]:  # resumed after its last committed epoch, nothing before it trained again
            assert result["resumed_epochs"], f"fold {f} had a checkpoint but started again from epoch 0"
            assert result["resumed_epochs"][0] >= before[f] - 1, (f, result["resumed_epochs"], before[f])
            assert (log["epoch"] == 0).sum() == 1
            resumed.append(f)
        else:
            assert result["resumed_epochs"] == []
    assert resumed
    # and the interrupted run gives the uninterrupted run's metrics (same seed, plain loop)
    ref = run_cv(synthetic_dataset, "msfanet", profile="cpu", out=tmp_path / "ref", plain=True,
                 overrides={"epochs": 4, "num_threads": 1}, progress=False)
    for f in (0, 1):
        got = pd.read_csv(run / "folds" / f"fold{f}" / "history.csv")
        for k in COMPARE:
            np.testing.assert_allclose(got[k], ref.histories[f][k], rtol=1e-5, atol=1e-6, err_msg=f"fold {f} {k}")
    assert summary["mean"] == pytest.approx(ref.summary["mean"], rel=1e-5, nan_ok=True)


def _tune_trial(config):
    """A Ray Tune function trainable wrapping a whole CV run, as the HPO issue will."""
    from ray import tune

    reported = set()

    def on_epoch(event, monitor):
        e = int(event["epoch"])
        m = monitor.fold_mean("val_auc", e)
        if m is not None and e not in reported:
            reported.add(e)
            tune.report({"fold_mean_val_auc": m, "epoch": e})

    run_cv(config["data"], "msfanet", profile="cpu", out=config["out"], on_epoch=on_epoch, progress=False,
           overrides={"lr": config["lr"], "epochs": 2, "num_threads": 1})


def test_cv_run_inside_a_tune_trial_reports_the_fold_mean_every_epoch(tiny_dataset, ray_conn, tmp_path):
    import ray.cloudpickle
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable by workers
    tuner = tune.Tuner(
        tune.with_resources(_tune_trial, {"CPU": 0.1}),  # the folds' TorchTrainers reserve their own
        param_space={"lr": 1e-3, "data": str(tiny_dataset), "out": str(tmp_path / "cv")},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="cv_in_trial"))
    grid = tuner.fit()
    res = grid[0]
    assert res.error is None, res.error
    hist = res.metrics_dataframe
    assert list(hist["epoch"]) == [0, 1]
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text(encoding="utf-8"))
    assert summary["folds_done"] == [0, 1]
    folds = [pd.read_csv(tmp_path / "cv" / "folds" / f"fold{f}" / "history.csv") for f in (0, 1)]
    for e in (0, 1):
        expect = np.mean([h["val_auc"].iloc[e] for h in folds])
        assert hist["fold_mean_val_auc"].iloc[e] == pytest.approx(expect)

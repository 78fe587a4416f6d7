"""A real driver kill: SIGKILL of the `distmsfa tune` process mid-study, then `--resume`:
no finished trial runs again, the interrupted one continues from its folds' checkpoints,
and the study ends with exactly num_samples trials."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def test_sigkilled_tune_driver_resumes_without_rerunning_finished_trials(tiny_dataset, ray_cluster, tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({
        "train": {"model_cfg": {"preset": "tiny"}, "epochs": 3, "batch_size": 4, "precision": "fp32", "num_threads": 1},
        "cv": {"cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 0},
        "search": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
        "tune": {"num_samples": 3, "max_concurrent_trials": 1, "scheduler": "none", "seed": 0, "trial_cpus": 0.5},
    }))
    study = tmp_path / "study"
    cmd = [sys.executable, "-m", "distmsfa", "tune", "--data", str(tiny_dataset), "--config", str(cfg),
           "--out", str(study), "--address", ray_cluster.address, "--no-bundle"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    trials = study / "trials"

    def state() -> tuple[list[Path], list[Path]]:
        dirs = sorted(trials.glob("*")) if trials.exists() else []
        finished = [d for d in dirs if (d / "summary.json").exists()]
        return dirs, finished

    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.time() + 900
        interrupted = None
        while time.time() < deadline and proc.poll() is None:
            dirs, finished = state()
            running = [d for d in dirs if d not in finished]
            # kill once a trial finished and the next one has both folds past their first checkpointed epoch
            if finished and running and all(_lines(running[0] / "folds" / f"fold{f}" / "metrics.jsonl") for f in (0, 1)):
                interrupted = running[0]
                break
            time.sleep(0.1)
        assert proc.poll() is None and interrupted is not None, (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not (study / "trials.csv").exists()
    first_finished = state()[1]
    done_before = {d.name: len(_lines(d / "starts.jsonl")) for d in first_finished}

    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_csv(study / "trials.csv")
    assert len(table) == 3 and table["trial_id"].is_unique
    assert set(table["status"]) == {"COMPLETE"}, table.to_string()
    assert sorted(d.name for d in trials.iterdir()) == sorted(table["trial_id"])
    for d in first_finished:  # a finished trial is not started again
        assert len(_lines(d / "starts.jsonl")) == done_before[d.name], d.name
    # the interrupted trial continued: started twice, and its folds resumed after their
    # checkpointed epochs instead of training epoch 0 again
    assert len(_lines(interrupted / "starts.jsonl")) == 2
    for f in (0, 1):
        log = pd.DataFrame(_lines(interrupted / "folds" / f"fold{f}" / "metrics.jsonl"))
        assert sorted(log["epoch"].unique()) == [0, 1, 2] and (log["epoch"] == 0).sum() == 1
    # Tune saw every epoch of the interrupted trial (an epoch reported after Tune's last saved
    # state is reported again on restore) and its iteration count matches the epochs
    reps = _lines(interrupted / "reports.jsonl")
    assert sorted({r["epoch"] for r in reps}) == [1, 2, 3]
    assert list(table["epochs_run"]) == [3, 3, 3]
    assert (study / "best.yaml").exists()
    # no Ray INFO/WARNING lines on the user's terminal by default
    assert "INFO" not in done.stderr and "WARNING" not in done.stderr, done.stderr[-2000:]

"""The cluster path of a study: `ray job submit -- distmsfa tune ...` against a real two-node
Ray cluster on loopback; the job succeeds, the bundle verifies, and the trial's fold workers
ran on both nodes (Ray's own record of the Train worker actors)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_tune_submitted_as_a_ray_job_runs_folds_on_both_nodes(two_equal_nodes, tiny_dataset, tmp_path):
    import ray
    from ray.util.state import list_actors

    from distmsfa.bundle import verify_bundle

    ray_bin = str(Path(sys.executable).with_name("ray"))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({
        "train": {"model_cfg": {"preset": "tiny"}, "epochs": 1, "batch_size": 4, "precision": "fp32", "num_threads": 1},
        # each node has 2 CPUs: the trial actor (0.5) and one fold (1 + 0.25) fit on one node, the
        # second fold's worker only on the other
        "cv": {"cpus_per_fold": 1.0, "data_cpus": 0.25, "max_failures": 0},
        "search": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
        "tune": {"num_samples": 1, "scheduler": "none", "seed": 0, "trial_cpus": 0.5},
    }))
    study = tmp_path / "study"
    cmd = [ray_bin, "job", "submit", f"--address={two_equal_nodes.dashboard_url}", "--",
           sys.executable, "-m", "distmsfa", "tune", "--data", str(tiny_dataset), "--config", str(cfg),
           "--out", str(study), "--auto-resume"]
    deadline = time.monotonic() + 90
    while True:
        proc = subprocess.run(cmd, env=dict(two_equal_nodes.env), capture_output=True, encoding="utf-8",
                              errors="replace", timeout=600)
        # the head's job agent comes up some seconds after the dashboard answers: Ray asks to retry
        if proc.returncode == 0 or "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    meta = verify_bundle(study / "bundle")
    assert meta["folds"] == [0, 1]
    ray.init(address=two_equal_nodes.address, log_to_driver=False)
    try:
        workers = list_actors(address=two_equal_nodes.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                             limit=1000, raise_on_missing_output=False)
        nodes = {a.node_id for a in workers}
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    assert len(workers) >= 2 and len(nodes) == 2 and nodes <= alive, workers

"""The cluster entry point: `ray job submit ... -- distmsfa cv ...` against a real two-node
Ray cluster on loopback (head + worker node started with `ray start`)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_cv_submitted_as_a_ray_job_to_a_two_node_cluster(two_node_cluster, synthetic_dataset, tmp_path):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cfg = tmp_path / "cfg.yaml"
    # the cpu profile's fold worker takes 1 CPU and the head has 1: the two folds cannot both
    # run on the head, so one must run on the worker node (checked below through the node ids
    # the workers record)
    cfg.write_text("train:\n  epochs: 1\n  num_threads: 1\n")
    run = tmp_path / "run"
    env = dict(two_node_cluster.env)
    status = subprocess.run(
        [ray_bin, "status", f"--address={two_node_cluster.address}"], env=env, capture_output=True, encoding="utf-8", errors="replace",
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("node_") >= 2, status.stdout  # two alive nodes

    cmd = [ray_bin, "job", "submit", f"--address={two_node_cluster.dashboard_url}", "--",
           "distmsfa", "cv", "--data", str(synthetic_dataset), "--model", "msfanet", "--profile", "cpu",
           "--config", str(cfg), "--folds", "0,1", "--out", str(run)]
    deadline = time.monotonic() + 90
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
        # The head's job agent comes up some seconds after the dashboard answers: Ray asks
        # clients to retry ("No available agent to submit job, please try again later").
        if proc.returncode == 0 or "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert sorted(int(f) for f in summary["folds"]) == [0, 1]
    for k in (0, 1):
        assert (run / "folds" / f"fold{k}" / "result.json").exists()
        assert (run / "folds" / f"fold{k}" / "best.pt").exists()
    assert (run / "learning_curves.png").stat().st_size > 0

    # the folds' Train workers ran on the cluster's nodes, and at least one on the worker node
    listed = subprocess.run([ray_bin, "list", "nodes", f"--address={two_node_cluster.dashboard_url}", "--format=json"],
                            env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=60)
    assert listed.returncode == 0, listed.stderr
    nodes = {n["node_id"]: bool(n["is_head_node"]) for n in json.loads(listed.stdout)}
    assert sorted(nodes.values()) == [False, True], nodes
    used = set()
    for k in (0, 1):
        starts = [json.loads(x) for x in (run / "folds" / f"fold{k}" / "timeline.jsonl").read_text(encoding="utf-8").splitlines()
                  if '"worker_start"' in x]
        assert starts and all(s["node_id"] in nodes for s in starts), (starts, nodes)
        used |= {s["node_id"] for s in starts}
    assert any(not nodes[n] for n in used), f"no fold ran on the worker node: {used} of {nodes}"

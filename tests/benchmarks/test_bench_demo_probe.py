"""benchmarks/bench_demo_probe.py runs end to end at a tiny size and writes every figure
docs/demo-learning.md quotes (the figures of a tiny run mean nothing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bench_demo_probe_tiny(tmp_path):
    out = tmp_path / "probe.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_demo_probe.py"), "--work", str(tmp_path / "w"),
                           "--n", "40", "--epochs", "1", "--probes", "early,late", "--out", str(out)],
                          env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["feature_ceiling"]) >= {"t1/recorded", "fs/recorded", "both/recorded", "both/true"}
    for v in res["feature_ceiling"].values():
        assert len(v["per_fold"]) == 4 and 0 <= v["mean_auc"] <= 1 and 0 <= v["external_auc"] <= 1
    assert set(res["probes"]) == {"early", "late"}
    for p in res["probes"].values():
        assert p["epochs"] == 1 and p["selection"] == "last" and p["mean_epoch_s"] > 0
        assert {"last", "best_val"} <= set(p["estimates"]) and p["external_ensemble_auc"] is not None
    assert res["probes"]["late"]["model_cfg"] == {"fusion": "late"}
    # a second call reuses the finished probes (no training): the same figures
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_demo_probe.py"), "--work", str(tmp_path / "w"),
                           "--n", "40", "--epochs", "1", "--probes", "early", "--skip-ceiling", "--out", str(out)],
                          env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(out.read_text())
    assert again["probes"]["early"]["honest"] == res["probes"]["early"]["honest"] and "late" in again["probes"]

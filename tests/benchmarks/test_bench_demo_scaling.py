"""benchmarks/bench_demo_scaling.py runs end to end at a tiny size and writes every figure
docs/demo-learning.md quotes from it (the figures of a tiny run mean nothing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bench_demo_scaling_tiny(tmp_path):
    out = tmp_path / "scaling.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    train = json.dumps({"model_cfg": {"preset": "demo", "morph": 3}, "epochs": 1, "selection": "last"})
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_demo_scaling.py"), "--work", str(tmp_path / "w"),
                           "--n", "40", "--models", "msfanet,baseline_fs", "--seeds", "0", "--tag", "t", "--train", train,
                           "--out", str(out)],
                          env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    internal = sum(v for k, v in res["cases_by_site_label"].items() if not k.startswith("NHH/"))
    assert res["n_cases"] == 40 and sum(res["cases_by_site_label"].values()) == 40
    assert {"t1/recorded", "fs/recorded", "both/recorded"} <= set(res["feature_ceiling"])
    runs = res["bench"]["per_seed"]["0"]["runs"]
    assert set(runs) == {"msfanet", "baseline_fs"}
    for r in runs.values():
        assert r["folds_done"] == [0, 1, 2, 3] and r["train"]["model_cfg"]["morph"] == 3 and r["train"]["epochs"] == 1
        assert 0 <= r["honest"]["pooled_auc"] <= 1 and r["external"]["ensemble_auc"] is not None
    # the one pair of the seed, on every internal case
    (key, test), = res["paired_delong_pooled_oof"].items()
    assert key == "s0:baseline_fs_vs_msfanet" and test["n"] == internal
    assert test["auc_b"] == pytest.approx(runs["msfanet"]["honest"]["pooled_auc"])

"""bench_demo_variants.py on hand-made bench outputs: the pairing, the seed filter, the counts.

No training: two variants' ``bench_demo_models.py``-shaped JSON and out-of-fold CSVs are
written by hand, so each figure the script reports is known in advance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_fig(mean: float) -> dict:
    return {"folds_done": [0, 1, 2, 3], "honest": {"mean_auc": mean, "std_auc": 0.1, "pooled_auc": mean},
            "estimates": {"best_val": {"mean_auc": mean + 0.05}}, "last_minus_best_val": -0.05,
            "external": {"ensemble_auc": 0.7, "mean_auc": 0.65}, "mean_epoch_s": 1.0}


def _write(tmp: Path, name: str, seeds: dict[int, float], probs: dict[int, np.ndarray], labels: np.ndarray) -> str:
    bench = {"overrides": {"name": name}, "per_seed": {str(s): {"runs": {"msfanet": _run_fig(m)}} for s, m in seeds.items()}}
    rows = [{"seed": s, "model": "msfanet", "case_id": f"c{i}", "fold": i % 4, "label": int(labels[i]), "prob": float(p)}
            for s, pr in probs.items() for i, p in enumerate(pr)]
    (tmp / f"{name}.json").write_text(json.dumps(bench))
    pd.DataFrame(rows).to_csv(tmp / f"{name}.csv", index=False)
    return f"{name}={tmp / f'{name}.json'},{tmp / f'{name}.csv'}"


def _bench(tmp: Path, *args: str) -> dict:
    out = tmp / "out.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_demo_variants.py"), "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_variants_pair_by_seed_and_filter(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 30)
    noise = {s: rng.random(60) for s in (0, 1, 2)}
    # the reference scores at random; the variant separates the classes in seed 0 and 1 only,
    # and is the reference's own prediction in seed 2 (p = 1: a pairing that mixed seeds would not see it)
    ref = _write(tmp_path, "ref", {0: 0.5, 1: 0.5, 2: 0.6}, noise, labels)
    good = {0: labels + 0.1 * noise[0], 1: labels + 0.1 * noise[1], 2: noise[2]}
    var = _write(tmp_path, "var", {0: 0.9, 1: 0.9, 2: 0.55, 3: 0.99}, {**good, 3: labels.astype(float)}, labels)
    r = _bench(tmp_path, "--ref", "ref", "--variant", ref, "--variant", var, "--seeds", "0,1,2")
    v = r["variants"]["var"]
    assert v["seeds"] == ["0", "1", "2"]  # seed 3 (no reference) filtered out
    assert v["mean_over_seeds"]["honest_mean_auc"] == pytest.approx((0.9 + 0.9 + 0.55) / 3)
    assert v["seeds_ahead_of_ref_honest_mean"] == 2  # seed 2: 0.55 < 0.6
    d = {s: v["per_seed"][s]["vs_ref_delong_pooled_oof"] for s in ("0", "1", "2")}
    assert d["0"]["auc_variant"] == pytest.approx(1.0) and d["0"]["p"] < 0.01 and d["0"]["n"] == 60
    assert d["2"]["auc_variant"] == pytest.approx(d["2"]["auc_ref"]) and d["2"]["p"] == pytest.approx(1.0, abs=1e-6)
    assert "vs_ref_delong_pooled_oof" not in r["variants"]["ref"]["per_seed"]["0"]
    assert r["variants"]["ref"]["seeds_ahead_of_ref_honest_mean"] is None


def test_unknown_reference_is_refused(tmp_path):
    labels = np.array([0, 1] * 4)
    ref = _write(tmp_path, "ref", {0: 0.5}, {0: np.linspace(0, 1, 8)}, labels)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_demo_variants.py"), "--out", str(tmp_path / "o.json"),
                           "--ref", "nope", "--variant", ref], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode != 0 and "nope" in proc.stderr

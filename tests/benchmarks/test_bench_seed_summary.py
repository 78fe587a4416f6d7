"""bench_seed_summary.py on hand-made out-of-fold predictions whose every figure is known.

No training: the predictions are built so that the ordering holds in chosen seeds only, and
so that two seeds that each rank badly average to a perfect ranking (the seed ensemble)."""
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
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_seed_summary import summarise  # noqa: E402

N = 80
LABELS = np.array([0, 1] * (N // 2))


def _rows(model: str, seed: int, prob: np.ndarray) -> list[dict]:
    return [{"seed": seed, "model": model, "case_id": f"c{i}", "fold": (i // 2) % 4, "label": int(LABELS[i]), "prob": float(p)}
            for i, p in enumerate(prob)]


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s in (0, 1, 2):
        rand = lambda: rng.random(N)  # noqa: E731
        # fused: perfect in seeds 0-1, random in seed 2 (so step 1 fails there)
        rows += _rows("msfanet", s, LABELS + 0.5 * rand() if s < 2 else rand())
        rows += _rows("baseline", s, LABELS + 1.5 * rand())  # good, not perfect
        rows += _rows("baseline_fs", s, LABELS * 0.2 + rand())  # weak
        rows += _rows("baseline_t1", s, rand())  # chance
    return pd.DataFrame(rows)


def test_the_ordering_counts_each_step_per_seed_against_the_better_single_sequence():
    r = summarise(_frame())
    o = r["ordering"]
    assert o["seeds"] == [0, 1, 2] and o["n_seeds"] == 3
    assert [o["per_seed"][s]["ordering_holds"] for s in ("0", "1", "2")] == [True, True, False]
    assert o["seeds_step1_ahead"] == 2 and o["seeds_step1_significant"] == 2
    assert o["seeds_step2_ahead"] == 3 and o["seeds_ordering_holds"] == 2
    # the single compared is the better one of the seed, FS here (T1 is random)
    assert all(v["better_single"] == "baseline_fs" for v in o["per_seed"].values())
    s0 = o["per_seed"]["0"]["msfanet_vs_baseline"]
    assert s0["auc_a"] == pytest.approx(1.0) and s0["n"] == N
    m = r["models"]["msfanet"]
    assert m["per_seed"]["0"]["fold_mean_auc"] == pytest.approx(1.0)
    assert m["fold_mean_auc_mean"] == pytest.approx(np.mean([m["per_seed"][s]["fold_mean_auc"] for s in ("0", "1", "2")]))


def test_the_seed_ensemble_averages_each_cases_probability_over_seeds():
    rng = np.random.default_rng(1)
    e = rng.random(N) * 2.0
    df = pd.DataFrame(_rows("msfanet", 0, LABELS + e) + _rows("msfanet", 1, LABELS - e))
    r = summarise(df)
    m = r["models"]["msfanet"]
    assert m["per_seed"]["0"]["pooled_auc"] < 0.9 and m["per_seed"]["1"]["pooled_auc"] < 0.9
    assert m["seed_ensemble"] == {"n_seeds": 2, "n_cases": N, "fold_mean_auc": pytest.approx(1.0),
                                  "pooled_auc": pytest.approx(1.0)}
    assert r["ordering"] == {}  # one model: nothing to order


def test_the_script_writes_json_and_refuses_overlapping_csvs(tmp_path):
    f = tmp_path / "oof.csv"
    _frame().to_csv(f, index=False)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_seed_summary.py"), "--oof", str(f), "--out", str(tmp_path / "o.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "o.json").read_text())["ordering"]["seeds_ordering_holds"] == 2
    assert "holds in 2 of 3 seeds" in proc.stdout
    proc = subprocess.run(cmd + ["--oof", str(f)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "overlap" in proc.stderr


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="fold"):
        summarise(_frame().drop(columns="fold"))


def test_the_fold_mean_ordering_is_counted_on_the_fold_mean_auc_not_the_pooled_one():
    # a fused model that ranks within each fold perfectly but is offset between folds:
    # fold-mean AUC 1, pooled AUC below the concatenation's
    fold = (np.arange(N) // 2) % 4
    fused = LABELS * 0.1 + fold * 1.0
    concat = LABELS + 1.5 * np.random.default_rng(2).random(N)
    df = pd.DataFrame(_rows("msfanet", 0, fused) + _rows("baseline", 0, concat) + _rows("baseline_fs", 0, 0.3 * LABELS + np.random.default_rng(3).random(N)))
    o = summarise(df)["ordering"]["per_seed"]["0"]
    assert o["fold_mean"]["auc"]["msfanet"] == pytest.approx(1.0)
    assert o["msfanet_vs_baseline"]["auc_a"] < o["msfanet_vs_baseline"]["auc_b"]
    assert o["step1_ahead"] is False and o["fold_mean"]["step1_ahead"] is True


def test_equal_aucs_are_a_tie_not_a_win():
    from bench_seed_summary import _ahead

    # seed 0 of the 120-case runs: MSFANet and Baseline have the same fold-mean AUC, summed from
    # different fold AUCs, and differ in the last bit
    assert _ahead(0.7045454545454546, 0.7045454545454545) is False
    assert _ahead(0.7045454545454546, 0.7045454545454545 - 1e-6) is True
    p = LABELS * 0.5 + np.random.default_rng(4).random(N)
    df = pd.DataFrame(_rows("msfanet", 0, p) + _rows("baseline", 0, p * 2.0 + 1.0) + _rows("baseline_fs", 0, np.random.default_rng(5).random(N)))
    o = summarise(df)["ordering"]["per_seed"]["0"]
    assert o["step1_ahead"] is False and o["fold_mean"]["step1_ahead"] is False


def test_a_single_model_run_in_fewer_seeds_does_not_shrink_the_seeds_counted():
    df = _frame()
    df = df[~((df.model == "baseline_t1") & (df.seed > 0))]  # T1 alone ran in seed 0 only
    o = summarise(df)["ordering"]
    assert o["seeds"] == [0, 1, 2] and o["seeds_ordering_holds"] == 2
    assert o["singles_per_seed"] == {"0": ["baseline_fs", "baseline_t1"], "1": ["baseline_fs"], "2": ["baseline_fs"]}
    df = df[~((df.model == "baseline_fs") & (df.seed == 2))]  # seed 2: no single model at all
    assert summarise(df)["ordering"]["seeds"] == [0, 1]

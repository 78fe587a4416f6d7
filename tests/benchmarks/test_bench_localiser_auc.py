"""benchmarks/bench_localiser_auc.py --site external: the figures it derives from per-case
scores (paired AUC comparison, bootstrap CIs, the issue-13 goals) and its cohort guard."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_localiser_auc as bench  # noqa: E402


def _scores(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    manual = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    return y, manual


def test_same_scores_give_no_difference():
    y, manual = _scores()
    r = bench.compare_probs(y, manual, manual.copy())
    assert r["auc_manual"] == pytest.approx(r["auc_predicted"])
    assert r["auc_difference"] == pytest.approx(0.0) and r["mean_abs_prob_diff"] == 0.0
    assert r["delong_p"] == pytest.approx(1.0)
    lo, hi = bench.diff_ci(y, manual, manual.copy(), n_boot=200)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.0)


def test_predicted_worse_is_a_negative_difference_with_its_ci():
    y, manual = _scores()
    rng = np.random.default_rng(1)
    predicted = np.clip(manual + rng.normal(0, 0.4, len(y)), 0, 1)  # noisier: a lower AUC
    r = bench.compare_probs(y, manual, predicted)
    assert r["auc_predicted"] < r["auc_manual"] and r["auc_difference"] < 0
    assert r["mean_abs_prob_diff"] == pytest.approx(float(np.abs(manual - predicted).mean()))
    lo, hi = bench.diff_ci(y, manual, predicted, n_boot=300)
    assert lo < r["auc_difference"] < hi
    lo, hi = bench.auc_ci(y, manual, n_boot=300)
    assert lo < r["auc_manual"] < hi <= 1.0


def _ext(err_left, err_right, diff):
    e = lambda mean, mx: {"mean": mean, "median": mean, "max": mx, "n": 10}  # noqa: E731
    return {"localiser_on_site": {"err_left_mm": e(*err_left), "err_right_mm": e(*err_right)},
            "classification": {"last": {"ensemble": {"auc_difference": diff}}}}


def test_goals_use_the_worse_joint_and_the_absolute_auc_difference():
    ok = bench._goals_met(_ext((3.0, 4.9), (4.0, 4.5), -0.019))
    assert ok["centroid_mean_le_5mm"] and ok["centroid_max_le_5mm"] and ok["auc_within_0_02"]
    bad = bench._goals_met(_ext((3.0, 9.0), (5.5, 6.0), 0.03))
    assert not bad["centroid_mean_le_5mm"] and not bad["centroid_max_le_5mm"] and not bad["auc_within_0_02"]
    assert not bench._goals_met(_ext((3.0, 4.0), (4.0, 4.0), -0.021))["auc_within_0_02"]


def test_external_mode_refuses_a_cohort_that_is_not_the_demos(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "cohort.json").write_text(json.dumps({"n": 24, "seed": 0, "config": {"profile": "demo"},
                                                    "external_site": "NHH"}))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_localiser_auc.py"), "--site", "external",
                           "--phase", "fit", "--cohort", str(cohort), "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and "not the demo cohort" in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing built

"""distmsfa.evaluation.stats against independent computations: DeLong by brute-force
Mann-Whitney structural components and by a large bootstrap, the t-test by its formula and
scipy, Holm by hand, the bootstrap's seeding, stratification and vectorised metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from distmsfa.evaluation.metrics import binary_metrics
from distmsfa.evaluation.stats import (bootstrap_ci, delong_auc, delong_ci, delong_paired_test, holm,
                                       metrics_with_ci, paired_ttest)


def _data(n=80, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.clip(0.3 * y + rng.normal(0.4, 0.2, n), 0, 1)
    b = np.clip(0.15 * y + 0.5 * a + rng.normal(0.2, 0.2, n), 0, 1)
    if ties:  # rounded scores: many ties across and within classes (midranks matter)
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


def _components(y, p):
    """DeLong's structural components by brute force: psi(X, Y) over all m x n pairs."""
    x, z = p[y == 1], p[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)  # auc, V10 (m,), V01 (n,)


def _brute_var(y, p):
    auc, v10, v01 = _components(y, p)
    return auc, v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size


@pytest.mark.parametrize("ties", [True, False])
def test_delong_variance_equals_brute_force_components(ties):
    y, a, _ = _data(ties=ties)
    auc, var = delong_auc(y, a)
    bauc, bvar = _brute_var(y, a)
    assert auc == pytest.approx(bauc, abs=1e-12)
    assert auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert var == pytest.approx(bvar, rel=1e-10)


def test_delong_ci_matches_a_large_bootstrap():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(120, int), np.zeros(150, int)]
    p = np.r_[rng.normal(1.0, 1.0, 120), rng.normal(0.0, 1.0, 150)]
    auc, lo, hi = delong_ci(y, p)
    pos, neg = p[y == 1], p[y == 0]
    boots = []
    for _ in range(15):  # 3000 stratified replicates, AUC by direct pair counting (no ties: continuous)
        xb, zb = pos[rng.integers(0, 120, (200, 120))], neg[rng.integers(0, 150, (200, 150))]
        boots.extend((xb[:, :, None] > zb[:, None, :]).mean(axis=(1, 2)))
    sd = np.std(boots, ddof=1)
    assert math.sqrt(delong_auc(y, p)[1]) == pytest.approx(sd, rel=0.1)
    blo, bhi = np.percentile(boots, [2.5, 97.5])
    assert lo == pytest.approx(blo, abs=0.015) and hi == pytest.approx(bhi, abs=0.015)
    assert lo < auc < hi


def test_delong_paired_test_equals_independent_computation():
    y, a, b = _data(n=70, seed=5)
    auc_a, auc_b, z, p = delong_paired_test(y, a, b)
    ra, ra10, ra01 = _components(y, a)
    rb, rb10, rb01 = _components(y, b)
    m, n = ra10.size, ra01.size
    s10 = np.cov(np.vstack([ra10, rb10]), ddof=1)
    s01 = np.cov(np.vstack([ra01, rb01]), ddof=1)
    s = s10 / m + s01 / n
    z_ref = (ra - rb) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    p_ref = math.erfc(abs(z_ref) / math.sqrt(2))
    assert (auc_a, auc_b) == (pytest.approx(ra), pytest.approx(rb))
    assert z == pytest.approx(z_ref, rel=1e-9) and p == pytest.approx(p_ref, rel=1e-9)
    assert 0 < p < 1


def test_delong_paired_test_identical_and_separated():
    y, a, _ = _data(n=40, seed=1)
    assert delong_paired_test(y, a, a)[2:] == (0.0, 1.0)
    strong = y + np.random.default_rng(0).normal(0, 0.05, y.size)  # AUC 1 vs a noisy score
    noise = np.random.default_rng(1).uniform(0, 1, y.size)
    assert delong_paired_test(np.r_[y, y, y], np.r_[strong, strong, strong], np.r_[noise, noise, noise])[3] < 1e-4


def test_one_class_gives_nan_not_an_error():
    y = np.ones(6, int)
    p = np.linspace(0, 1, 6)
    assert all(math.isnan(v) for v in delong_auc(y, p))
    assert all(math.isnan(v) for v in delong_ci(y, p))
    assert all(math.isnan(v) for v in delong_paired_test(y, p, p))
    v, lo, hi = bootstrap_ci(y, p, 0.5, "sen")
    assert v == pytest.approx(0.5) and math.isnan(lo) and math.isnan(hi)


def test_paired_ttest_formula_and_scipy():
    a = [0.81, 0.77, 0.85, 0.79]
    b = [0.74, 0.75, 0.80, 0.70]
    t, p = paired_ttest(a, b)
    d = np.subtract(a, b)
    t_ref = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert t == pytest.approx(t_ref, rel=1e-12)
    assert p == pytest.approx(2 * st.t.sf(abs(t_ref), d.size - 1), rel=1e-12)
    ref = st.ttest_rel(a, b)
    assert (t, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    with pytest.raises(ValueError, match="same|one value"):
        paired_ttest([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2"):
        paired_ttest([0.1], [0.2])


def test_holm_hand_example():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, float("nan"), 0.02])  # NaN not counted: 2 tests
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []


def test_bootstrap_is_seeded_stratified_and_contains_the_point():
    y, a, _ = _data(n=60, seed=2, ties=False)
    r1 = bootstrap_ci(y, a, 0.5, "sen", n_boot=500, seed=7)
    assert r1 == bootstrap_ci(y, a, 0.5, "sen", n_boot=500, seed=7)
    assert r1 != bootstrap_ci(y, a, 0.5, "sen", n_boot=500, seed=8)
    for name in ("auc", "acc", "sen", "spec", "f1", "brier"):
        v, lo, hi = bootstrap_ci(y, a, 0.5, name, n_boot=500, seed=0)
        assert lo <= v <= hi and lo < hi, name
    # stratified: every replicate keeps the class counts (an unstratified one would vary them)
    m = int(y.sum())
    assert bootstrap_ci(y, a, 0.5, lambda yy, pp, t: float(yy.sum()), n_boot=200) == (m, m, m)


@pytest.mark.parametrize("name", ["auc", "acc", "sen", "spec", "f1", "brier"])
def test_vectorised_bootstrap_equals_per_replicate_metric(name):
    """The vectorised replicates equal a callable metric computed per replicate on the same draws."""
    y, a, _ = _data(n=40, seed=4)

    def per_replicate(yy, pp, thr):
        return float(np.mean((pp - yy) ** 2)) if name == "brier" else binary_metrics(yy, pp, thr)[name]

    fast = bootstrap_ci(y, a, 0.45, name, n_boot=60, seed=11)
    slow = bootstrap_ci(y, a, 0.45, per_replicate, n_boot=60, seed=11)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_metrics_with_ci_values_and_methods():
    y, a, _ = _data(n=50, seed=6)
    res = metrics_with_ci(y, a, 0.5, n_boot=300, seed=1)
    point = binary_metrics(y, a, 0.5)
    assert set(res) == {"auc", "acc", "sen", "spec", "f1", "brier"}
    for k in ("auc", "acc", "sen", "spec", "f1"):
        assert res[k]["value"] == pytest.approx(point[k])
        assert res[k]["lo"] <= res[k]["value"] <= res[k]["hi"]
    assert res["auc"]["method"].startswith("DeLong") and "bootstrap" in res["sen"]["method"]
    assert res["brier"]["value"] == pytest.approx(np.mean((a - y) ** 2))
    assert (res["auc"]["lo"], res["auc"]["hi"]) == pytest.approx(delong_ci(y, a)[1:])

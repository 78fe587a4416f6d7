"""Statistics of the paper's report and sounder ones: DeLong AUC variance, CI and paired test,
the paper's paired t-test over folds, Holm's correction, stratified bootstrap CIs.

* DeLong et al. (1988) through the fast midrank algorithm of Sun & Xu (2014, IEEE SPL
  21(11):1389): the structural components of the Mann-Whitney AUC from three rankings
  (positives, negatives, all) instead of the m x n comparison matrix; O((m+n) log(m+n)).
  Variance = S10/m + S01/n (sample covariances, ddof=1, as DeLong and pROC).
* CIs for AUC: Wald on the AUC scale, clipped to [0, 1] (pROC's default ``delong`` CI).
* ``bootstrap_ci``: resample positives and negatives separately (stratified: every
  replicate keeps the class counts, so SEN/SPEC are always defined), percentile interval,
  seeded ``numpy.random.default_rng(seed)``; the point value is the metric on all cases.

Labels: 1 = axSpA (positive), 0 = non-axSpA.  A set with one class only has no AUC: the
AUC functions return NaN (and NaN variance / bounds / p) rather than raise, so a report over
many folds shows a dash for a degenerate fold instead of failing.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence, Union

import numpy as np
from scipy import stats as _st

from distmsfa.evaluation.metrics import _arrays, binary_metrics

BOOT_METRICS = ("auc", "acc", "sen", "spec", "f1", "brier")
MetricArg = Union[str, Callable[[np.ndarray, np.ndarray, float], float]]


def _split(labels, probs_list: Sequence) -> tuple[np.ndarray, int, int]:
    """(k, m+n) predictions with the m positives first, and m, n."""
    y, _ = _arrays(labels, probs_list[0])
    preds = np.stack([_arrays(labels, p)[1] for p in probs_list])
    order = np.argsort(-y, kind="stable")  # positives (1) first
    return preds[:, order], int(y.sum()), int(len(y) - y.sum())


def _fast_delong(preds: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Sun & Xu's algorithm: AUCs (k,) and their covariance (k, k) for positives-first ``preds``."""
    k, total = preds.shape
    n = total - m
    pos, neg = preds[:, :m], preds[:, m:]
    tx = _st.rankdata(pos, axis=1)  # midranks within the positives
    ty = _st.rankdata(neg, axis=1)  # within the negatives
    tz = _st.rankdata(preds, axis=1)  # within all
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n  # V10 of DeLong: per positive, the fraction of negatives below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # V01: per negative, the fraction of positives above it
    sx = np.atleast_2d(np.cov(v01, ddof=1)) if m > 1 else np.zeros((k, k))
    sy = np.atleast_2d(np.cov(v10, ddof=1)) if n > 1 else np.zeros((k, k))
    return aucs, sx / m + sy / n


def delong_auc(labels: Iterable, probs: Iterable) -> tuple[float, float]:
    """AUC and its DeLong variance (NaN, NaN with one class)."""
    p = np.asarray(list(probs) if not isinstance(probs, np.ndarray) else probs, dtype=float)
    preds, m, n = _split(labels, [p])
    if m == 0 or n == 0:
        return math.nan, math.nan
    aucs, cov = _fast_delong(preds, m)
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(labels: Iterable, probs: Iterable, alpha: float = 0.05) -> tuple[float, float, float]:
    """AUC with its (1 - alpha) DeLong CI (Wald, clipped to [0, 1])."""
    auc, var = delong_auc(labels, probs)
    if math.isnan(auc):
        return math.nan, math.nan, math.nan
    half = _st.norm.ppf(1 - alpha / 2) * math.sqrt(max(var, 0.0))
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_paired_test(labels: Iterable, probs_a: Iterable, probs_b: Iterable) -> tuple[float, float, float, float]:
    """DeLong's test of AUC_a == AUC_b on the same cases: (auc_a, auc_b, z, two-sided p).

    Identical AUCs with zero variance of the difference give z = 0, p = 1."""
    a = np.asarray(list(probs_a) if not isinstance(probs_a, np.ndarray) else probs_a, dtype=float)
    b = np.asarray(list(probs_b) if not isinstance(probs_b, np.ndarray) else probs_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired DeLong needs predictions of the same cases: {a.shape} vs {b.shape}")
    preds, m, n = _split(labels, [a, b])
    if m == 0 or n == 0:
        return math.nan, math.nan, math.nan, math.nan
    aucs, cov = _fast_delong(preds, m)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p = float(2 * _st.norm.sf(abs(z)))
    return float(aucs[0]), float(aucs[1]), float(z), p


def paired_ttest(values_a: Sequence[float], values_b: Sequence[float]) -> tuple[float, float]:
    """The paper's test: paired t-test over folds (``scipy.stats.ttest_rel``), two-sided (t, p)."""
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired t-test needs one value per fold for both methods: {a.shape} vs {b.shape}")
    if a.size < 2:
        raise ValueError("paired t-test needs at least 2 folds")
    res = _st.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (NaN stays NaN, not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    k = ok.size
    if k == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    out[order] = adj
    return out.tolist()


def _boot_values(name: str, yb: np.ndarray, pb: np.ndarray, threshold: float, m: int, n: int) -> np.ndarray:
    """Metric ``name`` on every replicate: ``yb``/``pb`` (n_boot, m+n), positives in the first m columns."""
    if name == "brier":
        return ((pb - yb) ** 2).mean(axis=1)
    if name == "auc":
        r = _st.rankdata(pb, axis=1)
        return (r[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    pred = pb >= threshold
    tp = pred[:, :m].sum(axis=1).astype(float)
    fp = pred[:, m:].sum(axis=1).astype(float)
    fn, tn = m - tp, n - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"acc": (tp + tn) / (m + n), "sen": tp / m, "spec": tn / n,
                "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)}[name]


def _point(name: str, y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    if name == "brier":
        return float(np.mean((p - y) ** 2))
    return float(binary_metrics(y, p, threshold)[name])


def bootstrap_ci(labels: Iterable, probs: Iterable, threshold: float, metric: MetricArg, n_boot: int = 2000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(value, lo, hi): ``metric`` on all cases and its stratified percentile bootstrap CI.

    ``metric``: one of auc, acc, sen, spec, f1, brier, or ``f(labels, probs, threshold) -> float``
    (run once per replicate: slower).  NaN bounds when a class is missing."""
    y, p = _arrays(labels, probs)
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    if isinstance(metric, str) and metric not in BOOT_METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {BOOT_METRICS} or a callable")
    value = _point(metric, y, p, threshold) if isinstance(metric, str) else float(metric(y, p, threshold))
    if m == 0 or n == 0 or n_boot < 1:
        return value, math.nan, math.nan
    rng = np.random.default_rng(seed)
    ib = rng.integers(0, m, size=(n_boot, m))
    jb = rng.integers(0, n, size=(n_boot, n))
    pb = np.concatenate([pos[ib], neg[jb]], axis=1)
    yb = np.concatenate([np.ones((n_boot, m)), np.zeros((n_boot, n))], axis=1)
    if isinstance(metric, str):
        vals = _boot_values(metric, yb, pb, threshold, m, n)
    else:
        vals = np.array([float(metric(yb[i].astype(np.int64), pb[i], threshold)) for i in range(n_boot)])
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return value, math.nan, math.nan
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return value, float(lo), float(hi)


def metrics_with_ci(labels: Iterable, probs: Iterable, threshold: float, n_boot: int = 2000, seed: int = 0,
                    alpha: float = 0.05) -> dict[str, dict[str, object]]:
    """``{metric: {"value", "lo", "hi", "method"}}`` for auc (DeLong), acc, sen, spec, f1 and
    brier (stratified bootstrap); ACC/SEN/SPEC/F1 at ``threshold``."""
    y, p = _arrays(labels, probs)
    out: dict[str, dict[str, object]] = {}
    auc, lo, hi = delong_ci(y, p, alpha)
    out["auc"] = {"value": auc, "lo": lo, "hi": hi, "method": f"DeLong {100 * (1 - alpha):g}% CI (Sun & Xu midranks)"}
    method = f"stratified bootstrap {100 * (1 - alpha):g}% percentile CI (n_boot={n_boot}, seed={seed})"
    for name in ("acc", "sen", "spec", "f1", "brier"):
        v, lo, hi = bootstrap_ci(y, p, threshold, name, n_boot=n_boot, seed=seed, alpha=alpha)
        out[name] = {"value": v, "lo": lo, "hi": hi, "method": method}
    return out

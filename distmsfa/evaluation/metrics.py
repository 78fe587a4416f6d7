"""Binary classification metrics for axSpA (1) vs non-axSpA (0): AUC, ACC, SEN, SPEC, F1.

Threshold policy (see docs/training.md):

* ``"fixed"`` (default): predict axSpA when ``p >= 0.5`` (or the given threshold).
* ``"youden"``: choose the threshold that maximises Youden's J = SEN + SPEC - 1 on the
  ROC curve of the *out-of-fold* predictions of a CV run, then apply that one threshold to
  every fold.  This is optimistic for the CV estimate itself (the threshold saw the labels);
  use it to fix the operating point that an external test set or deployment will use.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

METRIC_NAMES: tuple[str, ...] = ("auc", "acc", "sen", "spec", "f1")
THRESHOLD_POLICIES: tuple[str, ...] = ("fixed", "youden")


def _arrays(labels: Iterable, probs: Iterable) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, dtype=np.float64).ravel()
    p = np.asarray(list(probs) if not isinstance(probs, np.ndarray) else probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (non-axSpA) or 1 (axSpA)")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or Inf (the model diverged?)")
    return y.astype(np.int64), p


def youden_threshold(labels: Iterable, probs: Iterable) -> float:
    """The threshold maximising SEN + SPEC - 1; 0.5 when only one class is present."""
    y, p = _arrays(labels, probs)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j))
    # roc_curve's first threshold is +inf (predict nothing positive): keep it finite.
    return float(min(thr[best], 1.0))


def binary_metrics(labels: Iterable, probs: Iterable, threshold: float = 0.5) -> dict[str, float]:
    """AUC, ACC, SEN (recall of axSpA), SPEC, F1 at ``threshold``; NaN where undefined.

    AUC is NaN when the set holds one class only (e.g. a tiny validation fold)."""
    y, p = _arrays(labels, probs)
    if y.size == 0:
        return {k: math.nan for k in METRIC_NAMES}
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan
    sen = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
    return {
        "auc": auc,
        "acc": float((tp + tn) / y.size),
        "sen": float(sen),
        "spec": float(spec),
        "f1": float(f1),
    }


def choose_threshold(policy: str, labels: Iterable, probs: Iterable, fixed: float = 0.5) -> float:
    """Apply a threshold policy ('fixed' or 'youden') to (out-of-fold) predictions."""
    if policy == "fixed":
        return float(fixed)
    if policy == "youden":
        return youden_threshold(labels, probs)
    raise ValueError(f"unknown threshold policy {policy!r}; use one of {THRESHOLD_POLICIES}")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, as papers report over folds), NaNs skipped."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0

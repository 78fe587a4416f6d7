"""Patient-grouped, label-stratified k-fold assignment, written once and kept.

* First run: scikit-learn ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)``
  over the labelled cases of non-external sites (groups = patient_id).
* External-site cases get ``fold = <NA>, is_external = True``; unlabelled cases get
  ``fold = <NA>`` (they cannot be validated on).
* Later runs keep every existing assignment verbatim.  A new case of a patient that
  already has a fold joins that fold (grouping); a new patient is placed, in a
  seeded random order, into the fold that has the fewest cases of its label (ties:
  fewest cases overall, then the lowest fold number), so the folds stay stratified
  without moving anyone.  ``refold=True`` is the only way to rewrite assignments.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

FOLD_COLUMNS = ["case_id", "patient_id", "fold", "label", "site", "is_external"]


def _greedy(df: pd.DataFrame, folds: pd.Series, n_folds: int, rng: np.random.Generator) -> pd.Series:
    """Place unassigned patients one by one into the least-filled fold for their label."""
    folds = folds.copy()
    todo = df[folds.isna()]
    patients = list(dict.fromkeys(todo["patient_id"]))
    rng.shuffle(patients)
    for pid in patients:
        rows = todo.index[todo["patient_id"] == pid]
        lab = int(round(float(df.loc[rows, "label"].astype(float).mean())))
        per_label = [int(((folds == k) & (df["label"] == lab)).sum()) for k in range(n_folds)]
        total = [int((folds == k).sum()) for k in range(n_folds)]
        k = min(range(n_folds), key=lambda f: (per_label[f], total[f], f))
        folds.loc[rows] = k
    return folds


def assign_folds(
    cases: pd.DataFrame,
    n_folds: int = 4,
    seed: int = 0,
    external_sites: tuple[str, ...] | list[str] = (),
    existing: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Return FOLD_COLUMNS for ``cases`` (columns case_id, patient_id, label, site).

    ``existing`` (a previous folds table) is kept verbatim for the cases it lists."""
    from sklearn.model_selection import StratifiedGroupKFold

    df = cases[["case_id", "patient_id", "label", "site"]].drop_duplicates("case_id").reset_index(drop=True).copy()
    df["label"] = df["label"].astype("Int8")
    ext = set(external_sites)
    df["is_external"] = df["site"].isin(ext)
    folds = pd.Series(pd.NA, index=df.index, dtype="Int8")
    eligible = ~df["is_external"] & df["label"].notna()

    if existing is not None and len(existing):
        old = existing.set_index("case_id")
        known = df["case_id"].isin(old.index)
        folds[known] = old.loc[df.loc[known, "case_id"], "fold"].astype("Int8").to_numpy()
        df.loc[known, "is_external"] = old.loc[df.loc[known, "case_id"], "is_external"].astype(bool).to_numpy()
        # new cases of known patients follow their patient
        pat_fold = old.dropna(subset=["fold"]).groupby("patient_id")["fold"].first()
        new_same_patient = ~known & eligible & df["patient_id"].isin(pat_fold.index)
        folds[new_same_patient] = pat_fold.loc[df.loc[new_same_patient, "patient_id"]].astype("Int8").to_numpy()
        todo = ~known & eligible & folds.isna()
        if todo.any():
            filled = _greedy(df[eligible], folds[eligible], n_folds, np.random.default_rng(seed))
            folds[eligible] = filled.to_numpy()
    else:
        sub = df[eligible]
        n_groups = sub["patient_id"].nunique()
        min_class = int(sub.groupby("label")["patient_id"].nunique().min()) if len(sub) else 0
        if n_groups >= n_folds and min_class >= n_folds and sub["label"].nunique() > 1:
            sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            for k, (_, val) in enumerate(sgkf.split(sub, sub["label"].astype(int), groups=sub["patient_id"])):
                folds[sub.index[val]] = k
        elif len(sub):  # too few patients for sklearn: the same balancing rule as for new patients
            filled = _greedy(sub, folds[eligible], n_folds, np.random.default_rng(seed))
            folds[sub.index] = filled.to_numpy()
    df["fold"] = folds.astype("Int8")
    df.loc[df["is_external"], "fold"] = pd.NA
    return df[FOLD_COLUMNS]

"""Tables 3-6 of the paper from CV runs: mean ± std over folds, and p-values against the
reference (MSFANet) by two tests, each Holm-corrected across the table's comparisons:

* ``paired t-test over folds`` (the paper's test), on the per-fold AUCs (internal) or the
  fold models' external AUCs (external), paired by fold;
* ``paired DeLong`` on the pooled out-of-fold predictions (internal) or the fold-ensemble
  predictions of the external cases (external), paired by case.

The fold-level t-test has k - 1 = 3 degrees of freedom in a 4-fold CV, and the folds share
training cases, so its p-values are unreliable; DeLong on the pooled predictions uses
every case.  Both are shown with the test named beside every p.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from distmsfa.evaluation.metrics import METRIC_NAMES
from distmsfa.evaluation.paper_tables import PAPER, TABLE_MODELS, TABLE_TITLES, paper_cell
from distmsfa.evaluation.runs import Run

T_TEST = "paired t-test over folds (AUC), Holm"
DELONG = "paired DeLong (pooled out-of-fold AUC), Holm"
DELONG_EXT = "paired DeLong (external fold-ensemble AUC), Holm"
T_TEST_EXT = "paired t-test over fold models (external AUC), Holm"


@dataclass
class Table:
    key: str
    title: str
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    curves: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)  # (name, labels, probs) for ROC

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _pct(metric: str) -> float:
    return 1.0 if metric == "auc" else 100.0


def fmt_ms(mean: Optional[float], std: Optional[float], metric: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    k = _pct(metric)
    s = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f"±{std * k:.3f}" if metric == "auc" \
        else f"±{std * k:.2f}"
    return f"{mean * k:.3f}{s}" if metric == "auc" else f"{mean * k:.2f}{s}"


def fmt_p(p: Optional[float]) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _holm(ps: list[float]) -> list[float]:
    from distmsfa.evaluation.stats import holm

    idx = [i for i, p in enumerate(ps) if p is not None and not math.isnan(p)]
    out = [math.nan] * len(ps)
    if idx:
        for i, q in zip(idx, holm([ps[i] for i in idx])):
            out[i] = float(q)
    return out


def _ttest(a: dict[str, float], b: dict[str, float]) -> float:
    from distmsfa.evaluation.stats import paired_ttest

    keys = sorted(set(a) & set(b))
    x = [a[k] for k in keys]
    y = [b[k] for k in keys]
    if len(keys) < 2 or any(v is None or math.isnan(v) for v in x + y):
        return math.nan
    try:
        return float(paired_ttest(x, y)[1])
    except Exception:  # noqa: BLE001 - identical values etc.: no test possible
        return math.nan


def _delong(ref: pd.DataFrame, other: pd.DataFrame) -> float:
    from distmsfa.evaluation.stats import delong_paired_test

    m = ref[["case_id", "label", "prob"]].merge(other[["case_id", "prob"]], on="case_id", suffixes=("_a", "_b"))
    if len(m) < 3 or m["label"].nunique() < 2:
        return math.nan
    try:
        p = float(delong_paired_test(m["label"].to_numpy(int), m["prob_a"].to_numpy(float), m["prob_b"].to_numpy(float))[3])
    except Exception:  # noqa: BLE001 - degenerate (identical predictions): no test possible
        return math.nan
    return p


def _section(run: Run, external: bool) -> Optional[dict[str, Any]]:
    if external:
        return run.summary.get("external")
    return run.summary


def build_table(key: str, runs: list[Run], reference: Run, external: bool = False,
                models: Optional[tuple[str, ...]] = None, title: Optional[str] = None) -> Optional[Table]:
    """One of Tables 3-6 (``key``), rows in the paper's order; None when no run belongs to it.
    ``models``/``title`` build a table of other runs (no published counterpart)."""
    wanted = models if models is not None else TABLE_MODELS[key]
    members = [r for m in wanted for r in runs if r.model == m]
    if not members or (external and all(r.summary.get("external") is None for r in members)):
        return None
    rows: list[dict[str, Any]] = []
    p_t, p_d = [], []
    for r in members:
        sec = _section(r, external)
        row: dict[str, Any] = {"method": r.name, "model": r.model, "run": str(r.path),
                               "estimate": (f"external site, fold models (mean ± std), checkpoints: "
                                            f"{r.estimate_label}") if external else r.estimate_label,
                               "n_folds": len(r.folds)}
        for m in METRIC_NAMES:
            row[m] = fmt_ms(sec["mean"][m], sec["std"][m], m) if sec else "-"
            row[f"{m}_mean"] = sec["mean"][m] if sec else math.nan
            row[f"{m}_std"] = sec["std"][m] if sec else math.nan
        if external and sec:
            row["auc_fold_ensemble"] = sec["ensemble"]["auc"]
        is_ref = r is reference
        if is_ref or sec is None or (external and reference.summary.get("external") is None):
            pt = pdl = math.nan
        elif external:
            pt = _ttest({f: v["auc"] for f, v in reference.summary["external"]["folds"].items()},
                        {f: v["auc"] for f, v in sec["folds"].items()})
            pdl = _delong(reference.external, r.external) if r.external is not None else math.nan
        else:
            pt = _ttest({f: v["auc"] for f, v in reference.summary["folds"].items()},
                        {f: v["auc"] for f, v in sec["folds"].items()})
            pdl = _delong(reference.oof, r.oof)
        row["reference"] = is_ref
        p_t.append(pt)
        p_d.append(pdl)
        rows.append(row)
    ht, hd = _holm(p_t), _holm(p_d)
    t_name, d_name = (T_TEST_EXT, DELONG_EXT) if external else (T_TEST, DELONG)
    for row, a, b, ha, hb in zip(rows, p_t, p_d, ht, hd):
        row["p_ttest_raw"], row["p_ttest_holm"], row["p_delong_raw"], row["p_delong_holm"] = a, ha, b, hb
        row[f"p ({t_name})"] = "reference" if row["reference"] else fmt_p(ha)
        row[f"p ({d_name})"] = "reference" if row["reference"] else fmt_p(hb)
        for m in ("auc", "acc", "sen", "spec", "f1", "p"):
            row[f"paper {m.upper()}"] = paper_cell(key, row["model"], m)
    notes = [f"Reference: {reference.name}. p-values against it; each test Holm-corrected across the "
             f"{max(0, len(rows) - 1)} comparison(s) of this table.",
             "ACC, SEN, SPEC, F1 in percent; AUC as a fraction; mean ± std (ddof=1) over folds.",
             ] + ([f"Paper columns: the published Table {key[-1]} (Zou et al.; distmsfa/evaluation/paper_tables.py)."]
                  if key in PAPER else [])
    if external:
        notes.append("External site: every fold's selected checkpoint scores the external cases; mean ± std over the fold "
                     "models, p (DeLong) on the fold ensemble (mean probability).")
    curves = []
    for r in members:
        df = r.external if external else r.oof
        if df is not None and len(df) and df["label"].nunique() == 2:
            curves.append((r.name, df["label"].to_numpy(int), df["prob"].to_numpy(float)))
    return Table(key, title or TABLE_TITLES[key], rows, notes, curves)


def build_tables(runs: list[Run], reference_model: str = "msfanet") -> list[Table]:
    """Every table with at least one run, plus table 'runs' listing every run (internal)."""
    reference = next((r for r in runs if r.model == reference_model), runs[0])
    out: list[Table] = []
    allruns = build_table_all(runs, reference)
    out.append(allruns)
    for key in ("table3", "table4", "table5", "table6"):
        t = build_table(key, runs, reference, external=key == "table4")
        if t is not None:
            out.append(t)
    return out


def build_table_all(runs: list[Run], reference: Run) -> Table:
    """Every run given, internal CV, whatever its model (custom models included)."""
    t = build_table("runs", runs, reference, models=tuple(dict.fromkeys(r.model for r in runs)),
                    title="All runs: internal cross-validation")
    assert t is not None
    return t


DISPLAY_COLUMNS = ["method", "AUC", "ACC", "SEN", "SPEC", "F1"]


def display_frame(t: Table) -> pd.DataFrame:
    """The table as shown: ours, the p-values (test named in the header), the paper's."""
    df = t.frame()
    cols = {"method": "method"} | {m: m.upper() for m in METRIC_NAMES}
    show = df[list(cols)].rename(columns=cols)
    for c in df.columns:
        if c.startswith("p ("):
            show[c] = df[c]
    if "auc_fold_ensemble" in df:
        show["AUC, fold ensemble"] = df["auc_fold_ensemble"].map(lambda v: fmt_ms(v, None, "auc"))
    for c in df.columns:
        if c.startswith("paper ") and df[c].astype(str).str.len().gt(0).any():
            show[c] = df[c]
    show["estimate"] = df["estimate"]
    return show


__all__ = ["Table", "build_tables", "build_table", "display_frame", "fmt_ms", "fmt_p", "PAPER"]

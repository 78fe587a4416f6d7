"""Read finished CV run folders for the report, and refuse what cannot be compared.

A run folder (docs/training.md) holds ``run.json``, ``summary.json``,
``oof_predictions.csv``, ``external_predictions.csv`` (when the dataset has an external
site) and ``folds/fold<k>/``.  Paired tests need the same cases in the same folds, so
:func:`check_comparable` refuses runs on different datasets or fold splits.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd


class ReportError(ValueError):
    """A run folder cannot go into a report (one line naming the folder and the reason)."""


@dataclass
class Run:
    path: Path
    name: str  # how tables name the run (the model's paper name, or the folder when models repeat)
    model: str
    record: dict[str, Any]
    summary: dict[str, Any]
    oof: pd.DataFrame
    external: Optional[pd.DataFrame]
    histories: dict[int, pd.DataFrame] = field(default_factory=dict)

    @property
    def folds(self) -> list[int]:
        return [int(f) for f in self.summary.get("folds_done", self.record.get("folds", []))]

    @property
    def estimate_label(self) -> str:
        return self.summary.get("estimate_label", "(a) best validation epoch - OPTIMISTIC (run predates selection)")


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one finished run; ReportError (one line) when it is not a run or still going."""
    p = Path(path)
    if not p.is_dir():
        raise ReportError(f"{p}: no such folder")
    if not (p / "run.json").is_file():
        raise ReportError(f"{p}: not a CV run folder (no run.json; make one with `distmsfa cv`)")
    record = json.loads((p / "run.json").read_text(encoding="utf-8"))
    summary_file = p / "summary.json"
    if not summary_file.is_file():
        raise ReportError(f"{p}: the run is still going or was stopped (no summary.json); "
                          f"wait for it or finish it with `distmsfa cv --resume --out {p}`")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    t_sum = summary_file.stat().st_mtime
    for f in record.get("folds", []):
        log = p / "folds" / f"fold{f}" / "metrics.jsonl"
        if log.exists() and log.stat().st_mtime > t_sum + 1.0:
            raise ReportError(f"{p}: the run is still going (fold {f} logged epochs after summary.json was written)")
    missing = sorted(set(int(f) for f in record.get("folds", [])) - set(int(f) for f in summary.get("folds_done", [])))
    if missing:
        raise ReportError(f"{p}: fold(s) {missing} did not finish; finish them with `distmsfa cv --resume --out {p}`")
    oof = pd.read_csv(p / "oof_predictions.csv", dtype={"case_id": str})
    ext_file = p / "external_predictions.csv"
    external = pd.read_csv(ext_file, dtype={"case_id": str}) if ext_file.exists() else None
    hist = {}
    for f in record.get("folds", []):
        h = p / "folds" / f"fold{f}" / "history.csv"
        if h.exists():
            hist[int(f)] = pd.read_csv(h)
    return Run(p.resolve(), p.name, str(record.get("model")), record, summary, oof, external, hist)


def load_runs(paths: list[str | os.PathLike[str]]) -> list[Run]:
    from distmsfa.evaluation.paper_tables import DISPLAY

    if not paths:
        raise ReportError("no run folder given")
    runs = [load_run(p) for p in paths]
    names = [r.model for r in runs]
    for r in runs:  # a model run twice is named by its folder
        r.name = DISPLAY.get(r.model, r.model) if names.count(r.model) == 1 else f"{r.model} ({r.path.name})"
    check_comparable(runs)
    return runs


def _assignment(run: Run) -> pd.Series:
    return run.oof.set_index("case_id")["fold"].astype(int).sort_index()


def check_comparable(runs: list[Run]) -> None:
    """Same cases in the same folds (and the same external cases): else paired tests mean nothing."""
    ref = runs[0]
    a = _assignment(ref)
    for r in runs[1:]:
        b = _assignment(r)
        if not a.index.equals(b.index):
            extra = sorted(set(b.index) ^ set(a.index))[:3]
            raise ReportError(f"{r.path}: different cases than {ref.path} (e.g. {extra}); runs on different datasets "
                              f"cannot be compared by paired tests")
        diff = a.index[(a != b).to_numpy()]
        if len(diff):
            raise ReportError(f"{r.path}: a different fold split than {ref.path} (case {diff[0]} is in fold "
                              f"{int(b[diff[0]])}, not {int(a[diff[0]])}); paired tests need the same folds")
        ea = set() if ref.external is None else set(ref.external["case_id"])
        eb = set() if r.external is None else set(r.external["case_id"])
        if ea != eb:
            raise ReportError(f"{r.path}: different external cases than {ref.path}; runs on different datasets "
                              f"cannot be compared")

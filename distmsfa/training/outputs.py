"""What a fold and a CV run leave on disk (layout in docs/training.md), shared by the plain
and the Ray path.

    RUN/folds/fold<k>/metrics.jsonl      one line per finished epoch (appended as it goes)
    RUN/folds/fold<k>/best.pt, last.pt   weights chosen by the selection rule; last full state
    RUN/folds/fold<k>/history.csv        the fold's epoch metrics (at the end)
    RUN/folds/fold<k>/predictions.csv    validation predictions of the selected checkpoint
    RUN/folds/fold<k>/predictions_<estimate>.csv   the same for each estimate
                                         (best_val = optimistic, last, inner)
    RUN/folds/fold<k>/external_predictions.csv     the selected checkpoint on the external site
    RUN/folds/fold<k>/result.json        selected epoch + metrics, each estimate's epoch and
                                         metrics; its presence = fold done
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import pandas as pd

from distmsfa.training.loop import FoldResult

METRICS_FILE = "metrics.jsonl"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
RESULT_FILE = "result.json"
EXTERNAL_FILE = "external_predictions.csv"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, default=lambda o: _clean(float(o)) if hasattr(o, "__float__") else str(o))
    os.replace(tmp, path)


class FileReporter:
    """Appends each epoch's metrics to ``fold_dir/metrics.jsonl`` (JSON lines, NaN -> null)."""

    def __init__(self, fold_dir: str) -> None:
        self.path = os.path.join(fold_dir, METRICS_FILE)
        os.makedirs(fold_dir, exist_ok=True)

    def on_epoch(self, fold: int, metrics: dict[str, float], state: dict[str, Any], is_best: bool) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in metrics.items()} | {"is_best": is_best}) + "\n")


def read_metrics_log(fold_dir: str) -> pd.DataFrame:
    """The epoch log; an epoch logged twice (re-run after a failure) keeps its last line."""
    path = os.path.join(fold_dir, METRICS_FILE)
    if not os.path.exists(path):
        return pd.DataFrame()
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
    df = pd.DataFrame(rows)
    return df.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True) if len(df) else df


def estimate_file(key: str) -> str:
    return f"predictions_{key}.csv"


def write_fold_outputs(fold_dir: str, result: FoldResult) -> None:
    os.makedirs(fold_dir, exist_ok=True)
    pd.DataFrame(result.history).to_csv(os.path.join(fold_dir, HISTORY_FILE), index=False)
    result.predictions.to_csv(os.path.join(fold_dir, PREDICTIONS_FILE), index=False)
    for key, est in result.estimates.items():
        est["predictions"].to_csv(os.path.join(fold_dir, estimate_file(key)), index=False)
    if result.external is not None:
        result.external.to_csv(os.path.join(fold_dir, EXTERNAL_FILE), index=False)
    write_json(os.path.join(fold_dir, RESULT_FILE), {
        "fold": result.fold, "selection": result.selection, "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "estimates": {k: {"epoch": v["epoch"], "metrics": v["metrics"]} for k, v in result.estimates.items()},
        "epochs_run": len(result.history), "resumed_from_epoch": result.resumed_from_epoch,
        "resumed_epochs": sorted({int(h["resumed_from_epoch"]) for h in result.history if h["resumed_from_epoch"] >= 0}),
        # compile on/off, optimizer implementation, compile time (docs/training.md "GPU speed")
        "speed": result.extra.get("speed"),
    })


def fold_done(fold_dir: str) -> bool:
    return os.path.exists(os.path.join(fold_dir, RESULT_FILE))


def read_fold(fold_dir: str) -> dict[str, Any]:
    with open(os.path.join(fold_dir, RESULT_FILE), encoding="utf-8") as fh:
        res = json.load(fh)
    res["history"] = pd.read_csv(os.path.join(fold_dir, HISTORY_FILE))
    res["predictions"] = pd.read_csv(os.path.join(fold_dir, PREDICTIONS_FILE), dtype={"case_id": str})
    res["estimate_predictions"] = {
        k: pd.read_csv(os.path.join(fold_dir, estimate_file(k)), dtype={"case_id": str})
        for k in res.get("estimates", {}) if os.path.exists(os.path.join(fold_dir, estimate_file(k)))}
    ext = os.path.join(fold_dir, EXTERNAL_FILE)
    res["external"] = pd.read_csv(ext, dtype={"case_id": str}) if os.path.exists(ext) else None
    return res

"""``train_localiser``: patient-grouped cross-validation on the classification folds, then a
final localiser on every internal case, saved with its CV metrics (JSON + a Markdown table).

Data: the localiser needs the raw scans (a preprocessed dataset keeps only the crop), so it
reads a manifest.  Folds, in order of preference: the dataset's ``folds.parquet`` (``folds``
argument, or ``data`` itself when it is a dataset folder with ``manifest`` given), else the
classification fold rule itself (``distmsfa.data.folds.assign_folds``, same ``n_folds``,
``seed`` and external sites as ``distmsfa preprocess``), so the same patients are held out.
External-site cases are never trained on; the final localiser is measured on them.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from distmsfa.localiser.config import LocaliserConfig, LocaliserTrainConfig
from distmsfa.localiser.store import save_localiser
from distmsfa.localiser.train import evaluate, fit, load_cases, summarise

CV_FILE = "cv_metrics.json"
CASES_FILE = "cv_cases.csv"
TABLE_FILE = "cv_table.md"


@dataclasses.dataclass
class LocaliserReport:
    out: Path
    folds: dict  # fold -> summary
    pooled: dict  # summary over every out-of-fold case
    external: dict | None  # final localiser on external-site cases
    failures: list[tuple[str, str]]
    table: str


def _is_dataset(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "folds.parquet"))


def resolve_inputs(data: str, manifest: str | None = None, folds: str | None = None) -> tuple[str, pd.DataFrame | None]:
    """(manifest path, folds table or None) from the CLI's ``--data`` / ``--manifest`` / ``--folds``."""
    if _is_dataset(data):
        if manifest is None:
            raise ValueError(f"{data} is a preprocessed dataset, which keeps only the crops; the localiser needs "
                             f"the raw scans: pass the manifest it was built from with --manifest")
        folds = folds or data
        data = manifest
    table = None
    if folds is not None:
        fp = os.path.join(folds, "folds.parquet") if os.path.isdir(folds) else folds
        if not os.path.exists(fp):
            raise FileNotFoundError(f"no folds.parquet at {folds}; run `distmsfa preprocess` first or omit --folds")
        table = pd.read_parquet(fp)
    return data, table


def _fold_table(cases, folds: pd.DataFrame | None, n_folds: int, seed: int, external_sites: Sequence[str]) -> pd.DataFrame:
    from distmsfa.data.folds import assign_folds

    df = pd.DataFrame([{"case_id": c.case_id, "patient_id": c.patient_id, "label": c.label, "site": c.site}
                       for c in cases])
    if folds is None:
        return assign_folds(df, n_folds, seed, tuple(external_sites)).set_index("case_id")
    t = folds.set_index("case_id")
    missing = [c for c in df["case_id"] if c not in t.index]
    if missing:  # cases the dataset lacks (failed preprocessing): placed by the same rule, never moved
        extra = assign_folds(df, n_folds, seed, tuple(external_sites), existing=folds)
        t = extra.set_index("case_id")
    return t


def _table(folds: dict, pooled: dict | None, external: dict | None) -> str:
    def f(v, k):
        return "-" if v is None else f"{v[k]:.1f}"

    lines = ["| split | n | Dice left | Dice right | centroid err left (mm) | right (mm) | ROI centre (mm) "
             "| centre-of-image baseline (mm) | implausible |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"fold {k}", s) for k, s in folds.items()] + ([("pooled out-of-fold", pooled)] if pooled else [])
    if external:
        rows.append(("external (final model)", external))
    for name, s in rows:
        lines.append(f"| {name} | {s['n']} | {s['dice_left']:.3f} | {s['dice_right']:.3f} | "
                     f"{f(s['err_left_mm'], 'mean')} | {f(s['err_right_mm'], 'mean')} | {f(s['err_roi_mm'], 'mean')} | "
                     f"{f(s['err_centre_baseline_mm'], 'mean')} | {s['n_implausible']} |")
    lines.append("")
    lines.append("Means over cases; centroid errors against the manual label map at its own resolution "
                 "(LPS mm), over the cases where that joint was found.")
    return "\n".join(lines)


def train_localiser(data: str, out: str | os.PathLike[str], *, manifest: str | None = None, folds: str | None = None,
                    cfg: LocaliserConfig | None = None, tcfg: LocaliserTrainConfig | None = None,
                    n_folds: int = 4, seed: int = 0, external_sites: Sequence[str] = (),
                    cv: bool = True, progress: bool = True) -> LocaliserReport:
    """Cross-validate (unless ``cv=False``), train the final localiser on all internal cases,
    save it to ``out`` with ``cv_metrics.json``, ``cv_cases.csv`` and ``cv_table.md``."""
    from distmsfa.io.manifest import load_manifest

    cfg = cfg or LocaliserConfig()
    tcfg = tcfg or LocaliserTrainConfig()
    mpath, fold_df = resolve_inputs(data, manifest, folds)
    m = load_manifest(mpath)
    failures = [(p.case_id or f"row{p.row}", f"manifest row {p.row}: {p.message}") for p in m.problems]
    bar = _Bar(progress)
    with bar:
        task = bar.add("read cases", len(m.cases))
        cases, bad = load_cases(m.cases, cfg, progress=lambda i: bar.update(task, i))
    failures += bad
    if not cases:
        raise ValueError("no usable case (every case failed or has no ROI label map): " +
                         "; ".join(f"{c}: {r}" for c, r in failures[:5]))
    ft = _fold_table(cases, fold_df, n_folds, seed, external_sites)
    fold_of = {c.case_id: (None if pd.isna(ft.loc[c.case_id, "fold"]) else int(ft.loc[c.case_id, "fold"])) for c in cases}
    ext_of = {c.case_id: bool(ft.loc[c.case_id, "is_external"]) for c in cases}
    internal = [c for c in cases if not ext_of[c.case_id]]
    external = [c for c in cases if ext_of[c.case_id]]
    fold_ids = sorted({f for f in fold_of.values() if f is not None})

    per_fold, oof_rows = {}, []
    with bar:
        if cv:
            for k in fold_ids:
                train = [c for c in internal if fold_of[c.case_id] != k]
                val = [c for c in internal if fold_of[c.case_id] == k]
                task = bar.add(f"fold {k}", tcfg.epochs)
                loc, _ = fit(train, cfg, tcfg, on_epoch=lambda e, loss, t=task: bar.update(t, e, f"loss {loss:.3f}"))
                rows = evaluate(loc, val)
                for r in rows:
                    r["fold"] = k
                oof_rows += rows
                per_fold[k] = summarise(rows)
        task = bar.add("final", tcfg.epochs)
        final, history = fit(internal, cfg, tcfg, on_epoch=lambda e, loss: bar.update(task, e, f"loss {loss:.3f}"))
    ext_rows = evaluate(final, external) if external else []
    for r in ext_rows:
        r["fold"] = "external"
    pooled = summarise(oof_rows) if oof_rows else None
    ext_sum = summarise(ext_rows) if ext_rows else None
    out = Path(out)
    cv_block = {
        "how": ("patient-grouped k-fold on the classification folds: each fold's localiser trained on the other "
                "folds' internal cases for the fixed number of epochs (no epoch selection), measured on the held-out "
                "fold; external-site cases measured with the final localiser (trained on every internal case)"),
        "folds": {str(k): v for k, v in per_fold.items()}, "pooled": pooled, "external": ext_sum,
        "n_train_final": len(internal), "fold_source": "folds.parquet" if fold_df is not None else "assign_folds",
    }
    final.meta.update({"cv": cv_block, "loss_history": [round(v, 4) for v in history]})
    save_localiser(final, out, extra={"source": {"manifest": os.path.abspath(mpath)}})
    (out / CV_FILE).write_text(json.dumps({**cv_block, "failures": failures}, indent=2))
    pd.DataFrame(oof_rows + ext_rows).to_csv(out / CASES_FILE, index=False)
    table = _table(per_fold, pooled, ext_sum) if (pooled or ext_sum) else ""
    (out / TABLE_FILE).write_text(table + "\n", encoding="utf-8")
    return LocaliserReport(out, per_fold, pooled, ext_sum, failures, table)


class _Bar:
    """A rich progress display that can be switched off (tests, --no-progress)."""

    def __init__(self, enabled: bool) -> None:
        self.prog = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn())

    def __enter__(self):
        if self.prog:
            self.prog.start()
        return self

    def __exit__(self, *exc):
        if self.prog:
            self.prog.stop()

    def add(self, name: str, total: int):
        return self.prog.add_task(name, total=total, note="") if self.prog else None

    def update(self, task, completed: int, note: str = "") -> None:
        if self.prog:
            self.prog.update(task, completed=completed, note=note)

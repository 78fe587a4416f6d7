"""``distmsfa report RUN... --out DIR``: the paper's results section from finished CV runs.

    DIR/report.html        self-contained (images base64-embedded): tables, figures, notes
    DIR/report.md          the same in Markdown (images as files under figures/)
    DIR/report.json        tables (numbers, raw and Holm p-values), localisation, sources
    DIR/tables/<key>.csv   one CSV per table (display strings and the numbers behind them)
    DIR/figures/           fig4_<table>.png/.svg (ROC + 95 % bands), fig5_gradcam_<run>.png,
                           localisation.png, curves_<run>.png (learning curves)

Every number says what it is: the CV estimate of each run (``summary.json``'s
``estimate_label``: inner-split selection, last epoch, or best validation epoch marked
OPTIMISTIC), the split (internal CV or external site), and the test behind each p.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from distmsfa.evaluation import figures
from distmsfa.evaluation.paper_tables import CITATION
from distmsfa.evaluation.runs import ReportError, Run, load_runs
from distmsfa.evaluation.tables import Table, build_tables, display_frame


@dataclass
class Section:
    title: str
    frame: Optional[pd.DataFrame] = None
    notes: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


@dataclass
class ReportResult:
    out: Path
    tables: list[Table]
    localisation: dict[str, Any]
    files: list[Path]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def make_report(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, reference: str = "msfanet",
                lesions: Optional[str] = None, gradcam: bool = True, loc_cases: int = 16, tolerance_mm: float = 5.0,
                n_boot: int = 300, seed: int = 0) -> ReportResult:
    """Build the report of ``run_dirs`` into ``out`` (ReportError on a bad run folder).

    ``lesions``: a synthetic cohort's ``manifest.csv`` (its ``lesion`` column) to measure
    Grad-CAM localisation; ``gradcam=False`` skips Figure 5 and localisation."""
    runs = load_runs(list(run_dirs))
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    tables = build_tables(runs, reference)
    sections: list[Section] = []
    files: list[Path] = []
    ref = next((r for r in runs if r.model == reference), runs[0])

    for t in tables:
        full = t.frame()
        full.to_csv(out / "tables" / f"{t.key}.csv", index=False)
        files.append(out / "tables" / f"{t.key}.csv")
        imgs: list[Path] = []
        if len(t.curves):
            split = "external site, fold ensemble" if t.key == "table4" else "pooled out-of-fold"
            imgs = figures.roc_figure(t.curves, f"Figure 4 ({t.key}): ROC, {split}", out / "figures" / f"fig4_{t.key}",
                                      n_boot=n_boot, seed=seed)
            files.extend(imgs)
        sections.append(Section(t.title, display_frame(t), t.notes, [i for i in imgs if i.suffix == ".png"]))

    loc: dict[str, Any] = {}
    if gradcam:
        from distmsfa.evaluation.cams import montage_rows, run_localisation

        rows, notes = montage_rows(ref)
        if rows:
            imgs = figures.gradcam_montage(rows, out / "figures" / f"fig5_gradcam_{_safe(ref.path.name)}",
                                           f"Figure 5: Grad-CAM per branch, {ref.name} (out-of-fold models)")
            files.extend(imgs)
            ev_rows = [{"case": r["title"].split("\n")[0], "branch": b, "left": f"{sh['left']:.0%}",
                        "right": f"{sh['right']:.0%}", "outside": f"{sh['outside']:.0%}", "side": sh["side"]}
                       for r in rows for b, sh in (r.get("evidence") or {}).items()]
            ev_note = (["Under each map (and in the table): the share of its energy inside the left (L) and right (R) "
                        "joint masks of the case's crop ROI (rois/<case>.npy, given or predicted by the localiser)."]
                       if ev_rows else ["No per-joint shares: the ROIs hold no left/right joint labels."])
            sections.append(Section(f"Figure 5: Grad-CAM, {ref.name}", pd.DataFrame(ev_rows) if ev_rows else None,
                                    ["Most confident TP / FP / FN / TN out-of-fold cases at the run's threshold; each case "
                                     "explained by the fold model that did not train on it; slice of peak map energy."]
                                    + ev_note + notes, imgs))
        if lesions:
            from distmsfa.evaluation.localisation import lesion_paths

            paths = lesion_paths(lesions)
            for r in runs:
                res = run_localisation(r, paths, n_cases=loc_cases, tolerance_mm=tolerance_mm, seed=seed)
                if res is not None:
                    loc[r.name] = res
            if loc:
                sections.append(_localisation_section(loc, out, files))

    for r in runs:
        src = r.path / "learning_curves.png"
        if src.exists():
            dst = out / "figures" / f"curves_{_safe(r.path.name)}.png"
            shutil.copyfile(src, dst)
            files.append(dst)
            sections.append(Section(f"Learning curves: {r.name}", None,
                                    [f"run {r.path}; val = the fold's validation cases, inner = the inner selection split"],
                                    [dst]))

    meta = _meta(runs, ref)
    report_json = {"meta": meta, "tables": {t.key: {"title": t.title, "rows": t.rows, "notes": t.notes} for t in tables},
                   "localisation": loc}
    (out / "report.json").write_text(json.dumps(report_json, indent=2, default=_jsonable), encoding="utf-8")
    (out / "report.md").write_text(_markdown(meta, sections, out), encoding="utf-8")
    (out / "report.html").write_text(_html(meta, sections), encoding="utf-8")
    files += [out / "report.json", out / "report.md", out / "report.html"]
    return ReportResult(out, tables, loc, files)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "__float__"):
        v = float(o)
        return None if math.isnan(v) or math.isinf(v) else v
    return str(o)


def _localisation_section(loc: dict[str, Any], out: Path, files: list[Path]) -> Section:
    rows = []
    for name, res in loc.items():
        for b, s in res["branches"].items():
            rows.append({"method": name, "map": f"Grad-CAM {b}", "pointing game": f"{s['pointing']:.3f}",
                         "energy in lesion": f"{s['energy']:.3f}", "cases": res["n_cases"]})
        for base in ("uniform", "random_blobs"):
            rows.append({"method": name, "map": f"baseline: {base.replace('_', ' ')}",
                         "pointing game": f"{res[base]['pointing']:.3f}", "energy in lesion": f"{res[base]['energy']:.3f}",
                         "cases": res["n_cases"]})
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "tables" / "localisation.csv", index=False)
    files.append(out / "tables" / "localisation.csv")
    vals = {f"{n}: {b}": {"Grad-CAM": s["pointing"], "uniform": res["uniform"]["pointing"],
                          "random blobs": res["random_blobs"]["pointing"]}
            for n, res in loc.items() for b, s in res["branches"].items()}
    imgs = figures.bar_figure(vals, out / "figures" / "localisation", "pointing game: Grad-CAM vs baselines",
                              "hit rate")
    files.extend(imgs)
    tol = next(iter(loc.values()))["tolerance_mm"]
    return Section("Grad-CAM localisation (synthetic lesion masks)", frame,
                   [f"Pointing game: the map's maximum inside a lesion mask dilated by {tol:g} mm; energy: share of the map "
                    "inside the mask. Out-of-fold axSpA cases with a lesion; every finding code counts as lesion.",
                    "Baselines: a uniform map (chance of a random maximum) and random Gaussian blobs (seeded)."], imgs)


def _meta(runs: list[Run], ref: Run) -> dict[str, Any]:
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "reference": ref.name, "data": runs[0].record.get("data"),
            "runs": [{"name": r.name, "model": r.model, "path": str(r.path), "estimate": r.estimate_label,
                      "selection": r.summary.get("selection", "val"), "epochs": r.summary.get("epochs"),
                      "folds": r.folds, "threshold": r.summary.get("threshold"),
                      "threshold_policy": r.summary.get("threshold_policy"), "profile": r.record.get("profile")}
                     for r in runs],
            "citation": CITATION}


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "/").replace("\n", " ") for v in row.tolist()) + " |")
    return "\n".join(lines)


def _intro(meta: dict[str, Any]) -> list[str]:
    lines = [f"Dataset: `{meta['data']}`. Reference for p-values: {meta['reference']}.", "",
             "What each run's internal numbers are (the CV estimate):", ""]
    for r in meta["runs"]:
        lines.append(f"* {r['name']}: {r['estimate']}; {r['epochs']} epochs, folds {r['folds']}, threshold "
                     f"{r['threshold']:.3f} ({r['threshold_policy']}); run `{r['path']}`")
    lines += ["", f"Published figures: {meta['citation']}."]
    return lines


def _markdown(meta: dict[str, Any], sections: list[Section], out: Path) -> str:
    parts = ["# distmsfa report", "", f"Created {meta['created']}.", "", *_intro(meta), ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        if s.frame is not None:
            parts += [_md_table(s.frame), ""]
        parts += [f"* {n}" for n in s.notes] + [""]
        parts += [f"![{s.title}]({os.path.relpath(i, out)})" for i in s.images] + [""]
    return "\n".join(parts)


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;"
        "font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555;font-size:12px}")


def _html(meta: dict[str, Any], sections: list[Section]) -> str:
    body = [f"<h1>distmsfa report</h1><p class='note'>Created {html.escape(meta['created'])}.</p>"]
    intro = _intro(meta)
    body.append("<p>" + "<br>".join(html.escape(x.lstrip("* ")) for x in intro if x) + "</p>")
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.frame is not None:
            body.append(s.frame.to_html(index=False, escape=True, border=0))
        body += [f"<p class='note'>{html.escape(n)}</p>" for n in s.notes]
        for img in s.images:
            data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
            body.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>distmsfa report</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


__all__ = ["make_report", "ReportResult", "ReportError"]

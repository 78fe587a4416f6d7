"""The raw-case manifest: one row per case, CSV or Parquet.

Columns: ``case_id, patient_id, label, t1, fs`` (required), ``site`` (optional,
default ``"default"``), exactly one ROI column of ``roi`` (label-map path),
``roi_center_mm`` (``"x,y,z"`` LPS mm) or ``roi_bbox_mm`` (``"x0,y0,z0,x1,y1,z1"``),
and optional ``t1_series`` / ``fs_series`` DICOM series selectors.  Relative paths are
relative to the manifest's folder; URIs are kept as they are.

Policy: structural problems (unreadable file, missing required columns, no ROI column)
raise :class:`ManifestError` at once.  Row problems (missing file, unknown label,
duplicate case_id, malformed ROI...) are *all* collected with row numbers; with
``strict=False`` the affected rows become per-case failures and the good rows go on.
Rows are numbered from 1 for the first data row (a CSV's line number is row + 1).
A label of ``NaN``/``nan``/``<NA>``/``None`` or an empty cell makes the case unlabelled
(kept out of the folds, usable for scoring); every case of a patient must share one label.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re

import pandas as pd

from distmsfa.io import uris

REQUIRED_COLUMNS = ("case_id", "patient_id", "label", "t1", "fs")
ROI_COLUMNS = ("roi", "roi_center_mm", "roi_bbox_mm")
OPTIONAL_COLUMNS = ("site", "t1_series", "fs_series")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "": None, "nan": None, "<na>": None, "none": None}


class ManifestError(ValueError):
    """The manifest has problems; ``problems`` lists each one (with its row number)."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        shown = "; ".join(self.problems[:20]) + (f"; ... {len(self.problems) - 20} more" if len(self.problems) > 20 else "")
        super().__init__(f"manifest {os.path.basename(str(path))}: {len(self.problems)} problem(s): {shown}")


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One valid manifest row, with sources resolved to absolute paths or URIs."""

    case_id: str
    patient_id: str
    label: int | None
    site: str
    t1: str
    fs: str
    roi: str | None = None
    roi_center_mm: tuple[float, float, float] | None = None
    roi_bbox_mm: tuple[float, float, float, float, float, float] | None = None
    t1_series: str | None = None
    fs_series: str | None = None
    row: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("roi_center_mm", "roi_bbox_mm"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CaseSpec":
        d = dict(d)
        for k in ("roi_center_mm", "roi_bbox_mm"):
            d[k] = tuple(float(v) for v in d[k]) if d.get(k) is not None else None
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class RowProblem:
    row: int
    case_id: str  # may be "" when the row has no usable case id
    message: str

    def __str__(self) -> str:
        who = f" (case {self.case_id})" if self.case_id else ""
        return f"row {self.row}{who}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: str
    cases: tuple[CaseSpec, ...]
    problems: tuple[RowProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_table(path: str) -> pd.DataFrame:
    low = path.lower()
    try:
        if uris.is_uri(path):
            with uris.local_copy(path) as local:
                return _read_table(local)
        if low.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
            return df.astype(object).where(df.notna(), "").astype(str)
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise ManifestError(path, [f"file not found: {path}"]) from None
    except Exception as exc:  # noqa: BLE001 - any parse error is structural
        raise ManifestError(path, [f"cannot parse as {'Parquet' if low.endswith(('.parquet', '.pq')) else 'CSV'}: {exc}"]) from None


def _floats(text: str, n: int, col: str) -> tuple[float, ...]:
    parts = [p for p in re.split(r"[,\s;]+", text.strip().strip("()[]")) if p]
    if len(parts) != n:
        raise ValueError(f"{col} needs {n} numbers separated by commas, got {text!r}")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{col} needs numbers, got {text!r}") from None
    if not all(pd.notna(v) and abs(v) < 1e7 for v in vals):
        raise ValueError(f"{col} has non-finite values: {text!r}")
    return vals


def load_manifest(path: str | os.PathLike[str], *, check_files: bool = True, allow_missing_roi: bool = False) -> Manifest:
    """Parse and validate; raise ManifestError on structural problems, collect row problems.

    ``allow_missing_roi``: a row with no ROI cell (and a manifest with no ROI column) is valid;
    its CaseSpec has no ROI and the caller predicts one (``preprocess --localiser``)."""
    path = os.fspath(path)
    df = _read_table(uris.strip_file_uri(path) if path.startswith("file://") else path)
    df.columns = [str(c).strip() for c in df.columns]
    base = None if uris.is_uri(path) else os.path.dirname(os.path.abspath(uris.strip_file_uri(path)))
    known = REQUIRED_COLUMNS + ROI_COLUMNS + OPTIONAL_COLUMNS
    structural = []
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            close = difflib.get_close_matches(col, list(df.columns), n=1)
            structural.append(f"missing required column {col!r}" + (f" (found {close[0]!r})" if close else ""))
    roi_cols = [c for c in ROI_COLUMNS if c in df.columns]
    if not roi_cols and not allow_missing_roi:
        close = [c for c in df.columns if difflib.get_close_matches(c, ROI_COLUMNS, n=1)]
        structural.append(
            "no ROI column: add one of roi, roi_center_mm, roi_bbox_mm" + (f" (found {close})" if close else "")
        )
    if structural:
        raise ManifestError(path, structural + [f"columns present: {list(df.columns)}; known: {list(known)}"])
    if df.empty:
        raise ManifestError(path, ["no rows"])

    problems: list[RowProblem] = []
    counts = df["case_id"].str.strip().value_counts()
    cases: list[CaseSpec] = []
    for i, rec in enumerate(df.to_dict("records"), start=1):
        rec = {k: (str(v).strip() if v is not None else "") for k, v in rec.items()}
        cid = rec["case_id"]
        msgs = []
        if not cid:
            msgs.append("empty case_id")
        elif not _CASE_ID.match(cid):
            msgs.append(f"case_id {cid!r} may only hold letters, digits, '.', '_' and '-' (it names files)")
        elif counts.get(cid, 0) > 1:
            msgs.append(f"duplicate case_id {cid!r} ({counts[cid]} rows); every row with it is skipped")
        if not rec["patient_id"]:
            msgs.append("empty patient_id (folds are grouped by patient)")
        label_txt = rec["label"].lower()
        if label_txt not in _LABELS:
            msgs.append(f"unknown label {rec['label']!r}; use 1 (axSpA), 0 (non-axSpA) or empty (unlabelled)")
        srcs = {}
        for col in ("t1", "fs"):
            if not rec[col]:
                msgs.append(f"empty {col} path")
                continue
            srcs[col] = uris.resolve_source(rec[col], base)
        roi = center = bbox = None
        given = [c for c in roi_cols if rec.get(c)]
        if not given and allow_missing_roi:
            pass  # predicted later by the localiser
        elif len(given) != 1:
            msgs.append("give exactly one of roi, roi_center_mm, roi_bbox_mm" + (f" (got {given})" if given else ""))
        else:
            try:
                if given[0] == "roi":
                    roi = srcs["roi"] = uris.resolve_source(rec["roi"], base)
                elif given[0] == "roi_center_mm":
                    center = _floats(rec["roi_center_mm"], 3, "roi_center_mm")
                else:
                    bbox = _floats(rec["roi_bbox_mm"], 6, "roi_bbox_mm")
                    if any(bbox[k] >= bbox[k + 3] for k in range(3)):
                        raise ValueError(f"roi_bbox_mm needs x0<x1, y0<y1, z0<z1, got {rec['roi_bbox_mm']!r}")
            except ValueError as exc:
                msgs.append(str(exc))
        if check_files:
            for col, src in srcs.items():
                if not uris.is_uri(src) and not os.path.exists(src):
                    rel = not uris.is_uri(rec[col]) and not os.path.isabs(uris.strip_file_uri(rec[col]))
                    msgs.append(f"{col} file not found: {os.path.basename(src.rstrip('/'))}"
                                + (f" ({rec[col]!r} is relative: paths are resolved from the manifest's folder)"
                                   if rel else ""))
        if "t1" in srcs and srcs.get("t1") == srcs.get("fs") and not (rec.get("t1_series") or rec.get("fs_series")):
            msgs.append(f"t1 and fs name the same source ({os.path.basename(srcs['t1'].rstrip('/'))}); "
                        f"fs must be the fat-suppressed (STIR) series")
        if msgs:
            problems.extend(RowProblem(i, cid if _CASE_ID.match(cid or "-") else "", m) for m in msgs)
            continue
        cases.append(
            CaseSpec(
                case_id=cid, patient_id=rec["patient_id"], label=_LABELS[label_txt],
                site=rec.get("site") or "default", t1=srcs["t1"], fs=srcs["fs"], roi=roi,
                roi_center_mm=center, roi_bbox_mm=bbox,
                t1_series=rec.get("t1_series") or None, fs_series=rec.get("fs_series") or None, row=i,
            )
        )
    cases, problems = _one_label_per_patient(cases, problems)
    return Manifest(path, tuple(cases), tuple(problems))


def _one_label_per_patient(cases: list[CaseSpec], problems: list[RowProblem]) -> tuple[list[CaseSpec], list[RowProblem]]:
    """Refuse every case of a patient whose labelled cases disagree: folds are grouped by
    patient and the diagnosis is per patient, so one patient has one label."""
    labels: dict[str, set] = {}
    for c in cases:
        if c.label is not None:
            labels.setdefault(c.patient_id, set()).add(c.label)
    bad = {p for p, ls in labels.items() if len(ls) > 1}
    if not bad:
        return cases, problems
    keep = []
    for c in cases:
        if c.patient_id not in bad:
            keep.append(c)
            continue
        others = ", ".join(f"{o.case_id}={o.label}" for o in cases if o.patient_id == c.patient_id)
        problems.append(RowProblem(c.row, c.case_id, f"patient {c.patient_id} has cases with different labels "
                                                     f"({others}); one label per patient is needed (folds and the "
                                                     f"diagnosis are per patient): fix the labels"))
    return keep, sorted(problems, key=lambda p: p.row)


def validate_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Like :func:`load_manifest` but strict: any problem raises one ManifestError listing all."""
    m = load_manifest(path)
    if m.problems:
        raise ManifestError(m.path, [str(p) for p in m.problems])
    return m

"""``distmsfa evaluate --bundle B --data D [--split external|internal|all] --out DIR``: a model
bundle's fold ensemble on a preprocessed dataset.

    DIR/predictions.csv    case_id, site, label, prob (fold-ensemble mean), pred (prob >= the
                           bundle's threshold), prob_fold<k> per fold model
    DIR/metrics.json       AUC (DeLong 95 % CI), ACC, SEN, SPEC, F1 (stratified bootstrap 95 % CI,
                           seeded) at the bundle's threshold, Brier score; split, n, bundle identity
    DIR/roc.png, roc.svg   ROC with a 95 % bootstrap band
    DIR/calibration.png/.svg  reliability diagram with the Brier score

With ``joint_evidence=True`` (``--joint-evidence``) predictions.csv also has, per case,
``roi_source`` (given | predicted, from the dataset index) and ``evidence_<branch>_left`` /
``evidence_<branch>_right``: the share of the fold ensemble's Grad-CAM energy of each branch
inside the left / right joint mask of the case's crop ROI (``rois/<case>.npy``, given or
predicted; ``distmsfa.localiser.joint_evidence``).  Empty where the ROI holds no left and
right joint labels (an ROI given as a centre or a box).

The dataset must have been preprocessed as the bundle's training data was (spacing, crop,
orientation, intensity clipping, interpolation): otherwise the models see other inputs
than they learned from, and :class:`EvaluateError` names the difference.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

SPLITS = ("external", "internal", "all")
#: Preprocessing parameters that change the arrays a model sees (fingerprint.json "params").
PREPROCESS_KEYS = ("resolved_spacing_dhw", "crop_size", "orientation", "clip_percentiles", "normalize_region",
                   "interpolation", "roi_mask_mm", "preprocess_version")  # a missing key reads as None
VERSION_KEYS = ("distmsfa", "SimpleITK", "numpy")


class EvaluateError(ValueError):
    """The evaluation cannot run (one line naming the problem)."""


@dataclass
class EvaluateResult:
    out: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    warnings: list[str]


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float):
        return round(v, 4)
    return v


def compare_preprocessing(bundle_fp: dict[str, Any], data_fp: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences that refuse, version differences that only warn) between two fingerprints."""
    bp, dp = bundle_fp.get("params") or {}, data_fp.get("params") or {}
    diffs = [f"{k}: bundle {bp.get(k)!r}, dataset {dp.get(k)!r}" for k in PREPROCESS_KEYS
             if _norm(bp.get(k)) != _norm(dp.get(k))]
    vers = [f"{k}: bundle {bp.get(k)}, dataset {dp.get(k)}" for k in VERSION_KEYS if bp.get(k) != dp.get(k)]
    return diffs, vers


def _read_fingerprint(data: str) -> dict[str, Any]:
    from distmsfa.data.index import FINGERPRINT_FILE, read_bytes

    try:
        return json.loads(read_bytes(data, FINGERPRINT_FILE))
    except (FileNotFoundError, OSError):
        raise EvaluateError(f"{data}: no {FINGERPRINT_FILE}; is it a dataset written by `distmsfa preprocess`?") from None


def select_rows(index: pd.DataFrame, split: str) -> pd.DataFrame:
    if split not in SPLITS:
        raise EvaluateError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    ext = index["is_external"].astype(bool)
    rows = index[ext] if split == "external" else index[~ext] if split == "internal" else index
    if rows.empty:
        raise EvaluateError(f"the dataset has no {split} cases" + (" (no site was named external at preprocessing)"
                                                                   if split == "external" else ""))
    return rows.sort_values("case_id").reset_index(drop=True)


def predict_rows(pred, data: str, rows: pd.DataFrame, batch_size: int = 8) -> pd.DataFrame:
    """The ensemble's predictions for ``rows`` (index rows), in row order."""
    from distmsfa.data.index import load_pair

    probs, folds = [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows.iloc[i:i + batch_size]
        x = np.stack([load_pair(data, r, verify=True) for r in chunk.to_dict("records")]).astype(np.float32)
        out = pred.predict(x)
        probs.append(np.asarray(out["prob"], float))
        folds.append(np.asarray(out["fold_probs"], float))
    prob = np.concatenate(probs)
    fold_probs = np.concatenate(folds)
    df = pd.DataFrame({"case_id": rows["case_id"].astype(str), "site": rows.get("site"),
                       "label": rows["label"].astype("Int8"), "prob": prob,
                       "pred": (prob >= pred.threshold).astype(int)})
    for j, f in enumerate(pred.folds):
        df[f"prob_fold{f}"] = fold_probs[:, j]
    return df


def evidence_columns(pred, data: str, rows: pd.DataFrame, batch_size: int = 4) -> pd.DataFrame:
    """Per-case left/right Grad-CAM evidence (module doc) of ``rows`` (index rows), in row order."""
    from distmsfa.data.index import load_array, load_pair
    from distmsfa.localiser.evidence import joint_evidence

    recs: list[dict[str, Any]] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows.iloc[i:i + batch_size].to_dict("records")
        x = np.stack([load_pair(data, r, verify=True) for r in chunk]).astype(np.float32)
        maps = pred.gradcam(x)
        for j, r in enumerate(chunk):
            src = r.get("roi_source")
            rec: dict[str, Any] = {"roi_source": src if isinstance(src, str) and src else "given"}
            roi = load_array(data, r["roi_path"], case_id=r["case_id"]) if r.get("roi_path") else None
            if roi is not None and {1, 2} <= set(np.unique(roi).tolist()):
                for branch, sh in joint_evidence({b: m[j] for b, m in maps.items()}, roi).items():
                    rec[f"evidence_{branch}_left"] = sh["left"]
                    rec[f"evidence_{branch}_right"] = sh["right"]
            recs.append(rec)
    return pd.DataFrame(recs, index=rows.index)


def evaluate_bundle(bundle: str | os.PathLike[str], data: str | os.PathLike[str], split: str = "external",
                    out: str | os.PathLike[str] = "evaluation", *, n_boot: int = 2000, seed: int = 0,
                    device: Optional[str] = None, batch_size: int = 8, precision: str = "auto",
                    compile: str = "auto", joint_evidence: bool = False) -> EvaluateResult:  # noqa: A002
    """Score ``split`` of the dataset at ``data`` with the bundle; write DIR (module doc).
    ``precision``/``compile``/``batch_size``: the ensemble's inference path (``load_bundle``);
    ``joint_evidence``: Grad-CAM per case and its left/right joint shares."""
    from distmsfa.bundle import BundleError, load_bundle
    from distmsfa.data.index import read_index
    from distmsfa.evaluation import figures
    from distmsfa.evaluation.stats import metrics_with_ci

    data = str(data) if "://" in str(data) else os.path.abspath(data)
    if split not in SPLITS:
        raise EvaluateError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    try:
        pred = load_bundle(bundle, device=device, batch_size=batch_size, precision=precision, compile=compile)
    except (BundleError, ValueError) as exc:
        raise EvaluateError(str(exc).splitlines()[0]) from None
    diffs = pred.dataset_differences(data)  # the bundle's own check of the preprocessing parameters
    if diffs:
        raise EvaluateError(f"{data} was preprocessed differently from the bundle's training data ({'; '.join(diffs)}); "
                            f"preprocess the raw scans again with the bundle's settings (distmsfa bundle info)")
    fp = _read_fingerprint(data)
    vers = compare_preprocessing(pred.fingerprint, fp)[1]
    warnings = [f"library versions differ from the bundle's preprocessing ({'; '.join(vers)})"] if vers else []
    index = read_index(data)
    rows = select_rows(index, split)
    shape = tuple(int(v) for v in list(rows.iloc[0]["shape"])[-3:])
    if tuple(pred.crop_size) != shape:
        raise EvaluateError(f"{data}: crops are {shape} (D,H,W) but the bundle expects {tuple(pred.crop_size)}")
    same_data = (pred.fingerprint.get("fingerprint") == fp.get("fingerprint")
                 and os.path.abspath(str((pred.meta.get("source") or {}).get("data", ""))) == data)
    if split != "external" and same_data:
        warnings.append("these internal cases trained the bundle's fold models: the metrics below are NOT an estimate of "
                        "performance (use the CV run's summary, or --split external)")
    df = predict_rows(pred, data, rows, batch_size)
    if joint_evidence:
        ev = evidence_columns(pred, data, rows)
        df = pd.concat([df, ev.set_index(df.index)], axis=1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "predictions.csv", index=False)
    lab = df[df["label"].notna()]
    metrics: dict[str, Any] = {
        "split": split, "n_cases": int(len(df)), "n_labelled": int(len(lab)), "threshold": float(pred.threshold),
        "threshold_policy": pred.threshold_policy, "bundle": str(bundle), "bundle_checksum": pred.checksum,
        "model": pred.model_name, "folds": list(pred.folds), "data": data,
        "prediction": "fold ensemble: mean of the fold models' probabilities", "warnings": warnings,
        "ci": f"95%: AUC by DeLong; ACC, SEN, SPEC, F1 by stratified bootstrap ({n_boot} resamples, seed {seed})"}
    y = lab["label"].astype(int).to_numpy()
    p = lab["prob"].to_numpy(float)
    if len(lab) and len(np.unique(y)) == 2:
        metrics["metrics"] = metrics_with_ci(y, p, float(pred.threshold), n_boot=n_boot, seed=seed)
        figures.roc_figure([(pred.model_name, y, p)], f"ROC, {split} ({len(y)} cases, fold ensemble)", out / "roc",
                           n_boot=min(n_boot, 500), seed=seed)
        figures.calibration_figure(y, p, out / "calibration", title=f"calibration, {split}")
    else:
        warnings.append(f"{len(lab)} labelled case(s), {len(np.unique(y))} class(es): no AUC, CIs or ROC; predictions only")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    return EvaluateResult(out, metrics, df, warnings)

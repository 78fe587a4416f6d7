"""Grad-CAM over a finished CV run (Figure 5 and the localisation scores): each case is
explained by the fold model that did not train on it (its out-of-fold model), loaded from
the fold's ``best.pt`` (the checkpoint the run's selection rule chose) with
``torch.load(weights_only=True)`` (tensors and plain values only, nothing executed)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from distmsfa.evaluation.runs import Run


def fold_model(run: Run, fold: int):
    import torch

    from distmsfa.models import create_model

    path = run.path / "folds" / f"fold{fold}" / "best.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    train = run.record["train"]
    model = create_model(train["model"], **(train.get("model_cfg") or {}))
    model.load_state_dict(state["model"])
    return model.eval()


def _index(run: Run) -> pd.DataFrame:
    from distmsfa.data.index import read_index

    return read_index(run.record["data"]).set_index("case_id", drop=False)


def case_maps(run: Run, cases: pd.DataFrame, index: Optional[pd.DataFrame] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pairs (N, 2, D, H, W) and Grad-CAM maps {branch: (N, D, H, W)} of ``cases``
    (rows with case_id and fold), each by its out-of-fold model."""
    import torch

    from distmsfa.data.index import load_pair
    from distmsfa.models.gradcam import gradcam

    index = index if index is not None else _index(run)
    xs, maps = [], {}
    order = []
    for fold, grp in cases.groupby("fold", sort=True):
        model = fold_model(run, int(fold))
        x = np.stack([load_pair(run.record["data"], index.loc[c].to_dict()) for c in grp["case_id"]]).astype(np.float32)
        cams = gradcam(model, torch.from_numpy(x))
        xs.append(x)
        order.extend(grp["case_id"])
        for b, m in cams.items():
            maps.setdefault(b, []).append(m)
    pos = {c: i for i, c in enumerate(order)}
    perm = [pos[c] for c in cases["case_id"]]
    x_all = np.concatenate(xs)[perm]
    return x_all, {b: np.concatenate(v)[perm] for b, v in maps.items()}


def pick_cases(oof: pd.DataFrame, threshold: float) -> dict[str, Optional[pd.Series]]:
    """The most confident true positive, false positive, false negative and true negative."""
    pred = oof["prob"] >= threshold
    y = oof["label"].astype(int) == 1
    kinds = {"TP": (y & pred, False), "FP": (~y & pred, False), "FN": (y & ~pred, True), "TN": (~y & ~pred, True)}
    out: dict[str, Optional[pd.Series]] = {}
    for k, (m, asc) in kinds.items():
        sub = oof[m].sort_values(["prob", "case_id"], ascending=[asc, True])
        out[k] = sub.iloc[0] if len(sub) else None
    return out


def montage_rows(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    """Figure 5 rows for ``run`` and notes (missing categories)."""
    picks = pick_cases(run.oof, float(run.summary["threshold"]))
    chosen = pd.DataFrame([p for p in picks.values() if p is not None])
    notes = [f"no {k} case at threshold {run.summary['threshold']:.3f}" for k, p in picks.items() if p is None]
    if chosen.empty:
        return [], notes
    index = _index(run)
    x, maps = case_maps(run, chosen, index)
    rows = []
    for i, (kind, p) in enumerate((k, p) for k, p in picks.items() if p is not None):
        case_maps_i = {b: m[i] for b, m in maps.items()}
        rows.append({"title": f"{kind} {p['case_id']}\np={p['prob']:.2f} y={int(p['label'])}", "x": x[i],
                     "maps": case_maps_i, "evidence": case_evidence(run, index.loc[p["case_id"]], case_maps_i)})
    return rows, notes


def case_evidence(run: Run, row: pd.Series, maps: dict[str, np.ndarray]) -> Optional[dict[str, dict]]:
    """``joint_evidence`` of one case's maps with its crop ROI (``rois/<case>.npy``, given or
    predicted), or None when the ROI holds no left (1) and right (2) joint labels."""
    from distmsfa.data.index import load_array
    from distmsfa.localiser.evidence import joint_evidence

    rel = row.get("roi_path")
    if not isinstance(rel, str) or not rel:
        return None
    roi = load_array(run.record["data"], rel, case_id=str(row.get("case_id")))
    if roi.shape != next(iter(maps.values())).shape or not {1, 2} <= set(np.unique(roi).tolist()):
        return None
    return joint_evidence(maps, roi)


def run_localisation(run: Run, lesions: dict[str, str], n_cases: int = 16, tolerance_mm: float = 5.0,
                     seed: int = 0) -> Optional[dict[str, Any]]:
    """Localisation scores of ``run``'s Grad-CAM maps on up to ``n_cases`` axSpA cases
    (out-of-fold, with a lesion mask), per branch, against the baselines."""
    from distmsfa.evaluation.localisation import lesion_mask_in_crop, localisation_scores

    index = _index(run)
    pos = run.oof[(run.oof["label"] == 1) & run.oof["case_id"].isin(list(lesions))].sort_values("case_id")
    masks, keep = [], []
    for r in pos.itertuples():
        m = lesion_mask_in_crop(lesions[r.case_id], index.loc[r.case_id].to_dict())
        if m.any():
            masks.append(m)
            keep.append(r.case_id)
        if len(keep) >= n_cases:
            break
    if not keep:
        return None
    cases = pos.set_index("case_id").loc[keep].reset_index()
    _, maps = case_maps(run, cases, index)
    spacing = np.stack([np.asarray(list(index.loc[c, "spacing_mm"]), float) for c in keep])
    return localisation_scores(maps, np.stack(masks), spacing, tolerance_mm=tolerance_mm, seed=seed)

"""The scoring pipeline as plain Python (Serve's deployments wrap these functions).

``prepare_upload``: checked upload -> the model input ``(2, D, H, W)`` float16 (T1, FS), in
[0, 1], on the bundle's crop grid, by the bundle's ``prepare`` (the training preprocessing),
plus the facts of where the crop sat and plausibility warnings.  ``build_answer``: one case's
prediction -> the JSON answer.  ``score_in_process``: both, without Serve (the reference the
HTTP answer must equal, and the in-process side of the benchmark).
"""
from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from distmsfa.data.preprocess import Roi
from distmsfa.io.errors import ImageReadError
from distmsfa.serving.cases import Phi, geometry, private_folder, read_case
from distmsfa.serving.errors import UNPROCESSABLE, ServeError
from distmsfa.serving.uploads import Upload

log = logging.getLogger("distmsfa.serving")
LABEL_NAMES = {0: "non-axSpA", 1: "axSpA"}


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def roi_required_error() -> ServeError:
    return ServeError(UNPROCESSABLE, "roi_required",
                      "no ROI given (roi or roi_center_mm) and this model bundle carries no localiser to predict one; "
                      "send the ROI, or serve a bundle with a localiser (distmsfa localiser attach)")


def _predict_roi(localiser, case, case_id: str | None):
    """The localiser's label map (coarse grid) and info; ``implausible_roi`` (422) naming the case."""
    from distmsfa.localiser.model import RoiPredictionError, predict_roi

    try:
        return predict_roi(localiser, case.t1, case.fs)
    except RoiPredictionError as exc:
        who = f"case {case_id}: " if case_id else ""
        raise ServeError(UNPROCESSABLE, "implausible_roi", who + str(exc).splitlines()[0]) from None


def roi_on_t1_grid(label_map, t1) -> bytes:
    """A predicted label map (coarse grid) resampled (nearest neighbour) onto the T1's grid, as .nii.gz bytes."""
    import SimpleITK as sitk

    from distmsfa.localiser.store import predicted_roi_nifti

    on_t1 = sitk.Resample(label_map, t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return predicted_roi_nifti(on_t1)


def evidence_mask(roi_crop: np.ndarray, roi_kind: str) -> tuple[np.ndarray | None, str | None]:
    """The crop-grid ROI for ``joint_evidence`` (labels 1 = left, 2 = right), or None and why not."""
    if roi_kind == "center":
        return None, "the ROI was given as a centre (roi_center_mm): no joint masks to split the evidence by"
    present = set(np.unique(roi_crop).tolist())
    if not {1, 2} <= present:
        return None, ("the ROI label map does not hold both joints inside the crop (labels 1 = left, 2 = right); "
                      "per-joint evidence needs both")
    return np.ascontiguousarray(roi_crop, dtype=np.uint8), None


def prepare_upload(predictor, upload: Upload, *, max_unzipped_bytes: int, max_entries: int, localiser=None,
                   return_roi: bool = False) -> dict:
    """Read + preprocess one upload in a private temp folder (removed on return or error).

    An upload without an ROI gets the ``localiser``'s (``distmsfa.localiser``; ``roi_required``
    422 when None, ``implausible_roi`` 422 when its prediction is implausible).

    Returns ``{"pair": float16 (2, D, H, W), "facts": {...}, "warnings": [...], "t1_geometry": {...},
    "roi": {...} (source given|predicted; predicted: centroids, volumes, with ``return_roi`` the label
    map on the T1 grid as base64 .nii.gz), "roi_crop": uint8 (D, H, W) | None, "evidence_note": str | None}``;
    raises ``ServeError`` (422/413) with messages scrubbed of DICOM identifiers."""
    import base64

    predicted = upload.roi is None and upload.roi_center_mm is None
    if predicted and localiser is None:  # before reading anything: the case cannot be scored here
        raise roi_required_error()
    phi = Phi()
    try:
        with private_folder() as folder:
            case = read_case(upload, folder, phi, max_unzipped_bytes=max_unzipped_bytes, max_entries=max_entries)
            roi = case.roi
            roi_info: dict = {"source": "given", "kind": case.roi_kind}
            if predicted:
                label_map, info = _predict_roi(localiser, case, upload.case_id)
                roi = Roi(label_map=label_map)
                roi_info = {"source": "predicted", "kind": "label_map", "centroids_mm": info["centroids_mm"],
                            "volumes_ml": info["volumes_ml"], "mean_prob": info.get("mean_prob"),
                            "separation_mm": info.get("separation_mm"),
                            "localiser": (localiser.meta.get("weights_sha256") or "")[:16] or None}
                if return_roi:
                    roi_info["label_map_nifti_gz_base64"] = base64.b64encode(roi_on_t1_grid(label_map, case.t1)).decode("ascii")
                    roi_info["label_map_space"] = "input t1 grid (nearest neighbour from the localiser's coarse grid)"
            pre, warnings = predictor.prepare(case.t1, case.fs, roi)
    except ServeError as exc:
        exc.message = phi.scrub(exc.message)
        raise
    except ImageReadError as exc:
        raise ServeError(UNPROCESSABLE, "invalid_image", phi.scrub(str(exc))) from None
    roi_crop, note = evidence_mask(pre.roi, roi_info["kind"])
    facts = {
        "roi_kind": roi_info["kind"],
        "spacing_dhw_mm": [float(v) for v in pre.spacing_dhw],
        "crop_size_dhw": [int(v) for v in pre.pair.shape[1:]],
        "crop_size_mm": [float(v) for v in pre.crop_size_mm],
        "crop_origin_mm": [float(v) for v in pre.crop_origin_mm],
        "crop_direction": [float(v) for v in pre.crop_direction],
        "t1_coverage": float(pre.t1_coverage),
        "fs_coverage": float(pre.fs_coverage),
        "t1_input": {k: v for k, v in geometry(case.t1).items() if k in ("size", "spacing")},
        "fs_input": {k: v for k, v in geometry(case.fs).items() if k in ("size", "spacing")},
    }
    return {"pair": np.ascontiguousarray(pre.pair, dtype=np.float16), "facts": facts,
            "warnings": [phi.scrub(str(w)) for w in warnings], "t1_geometry": geometry(case.t1),
            "roi": roi_info, "roi_crop": roi_crop, "evidence_note": note}


def split_prediction(pred: dict, i: int) -> dict:
    """Row ``i`` of a batched ``EnsemblePredictor.predict`` result, as plain floats."""
    return {
        "prob": float(np.asarray(pred["prob"])[i]),
        "label": int(np.asarray(pred["label"])[i]),
        "fold_probs": [float(v) for v in np.asarray(pred["fold_probs"])[i]],
        "head_probs": {h: [float(v) for v in np.asarray(a)[i]] for h, a in pred.get("head_probs", {}).items()},
    }


def model_summary(predictor) -> dict:
    meta = getattr(predictor, "meta", {}) or {}
    return {
        "name": predictor.model_name,
        "checksum": predictor.checksum,
        "folds": [int(f) for f in predictor.folds],
        "checkpoint": meta.get("checkpoint"),
        "selection": meta.get("selection"),
    }


def build_answer(*, case_id: str | None, request_id: str, row: dict, predictor_info: dict, facts: dict,
                 warnings: list[str], timing: dict, roi: dict | None = None) -> dict:
    """The JSON answer of one case (``row``: ``split_prediction`` output)."""
    folds = predictor_info["model"]["folds"]
    per_fold = []
    for j, fold in enumerate(folds):
        per_fold.append({"fold": fold, "probability": row["fold_probs"][j],
                         "heads": {h: v[j] for h, v in row["head_probs"].items()}})
    label = int(row["label"])
    return {
        "case_id": case_id,
        "request_id": request_id,
        "probability": row["prob"],
        "label": label,
        "label_name": LABEL_NAMES[label],
        "threshold": predictor_info["threshold"],
        "threshold_policy": predictor_info.get("threshold_policy"),
        "roi_source": (roi or {}).get("source", "given"),
        "roi": roi or {"source": "given"},
        "folds": per_fold,
        "model": predictor_info["model"],
        "preprocessing": facts,
        "warnings": list(warnings),
        "timing_ms": {k: round(v * 1000.0, 2) for k, v in timing.items()},
        "intended_use": "research use only; not a medical device",
    }


def predictor_info(predictor) -> dict:
    return {"model": model_summary(predictor), "threshold": float(predictor.threshold),
            "threshold_policy": getattr(predictor, "threshold_policy", None)}


def score_in_process(predictor, upload: Upload, *, max_unzipped_bytes: int = 1 << 30, max_entries: int = 5000,
                     localiser=None) -> dict:
    """The whole pipeline in this process (no Serve): the reference for the HTTP answer."""
    t0 = time.perf_counter()
    prep = prepare_upload(predictor, upload, max_unzipped_bytes=max_unzipped_bytes, max_entries=max_entries,
                          localiser=localiser)
    t1 = time.perf_counter()
    pred = predictor.predict(prep["pair"][None].astype(np.float32))
    t2 = time.perf_counter()
    return build_answer(case_id=upload.case_id, request_id="in-process", row=split_prediction(pred, 0),
                        predictor_info=predictor_info(predictor), facts=prep["facts"], warnings=prep["warnings"],
                        timing={"preprocess": t1 - t0, "model": t2 - t1, "total": t2 - t0}, roi=prep["roi"])

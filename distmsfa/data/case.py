"""One case from manifest row to files on disk: read, preprocess, save, describe.

``process_case(task)`` is the unit of work of both the serial loop and the Ray Data
map; it never raises: any problem becomes ``status="failed"`` with a one-line reason.
A task/result is a plain JSON-able dict so that it crosses process boundaries as is.
"""
from __future__ import annotations

import json
import os
import re
import traceback

import SimpleITK as sitk

from distmsfa.data import index as dsindex
from distmsfa.data.preprocess import PreprocessConfig, Roi, check_geometry, preprocess_images
from distmsfa.io.errors import ImageReadError
from distmsfa.io.manifest import CaseSpec


def make_task(case: CaseSpec, root: str, cfg: PreprocessConfig, spacing_dhw, fingerprint: str,
              previous: dict | None, threads: int = 0, localiser: str | None = None) -> dict:
    """``localiser``: folder of a trained localiser; a case without ROI gets a predicted one."""
    return {
        "case": case.to_dict(), "root": str(root), "cfg": cfg.to_dict(), "spacing_dhw": list(spacing_dhw),
        "fingerprint": fingerprint, "previous": json.dumps(previous, default=_jsonable) if previous else "",
        "threads": int(threads), "localiser": str(localiser) if localiser else "",
    }


def _has_roi(case: CaseSpec) -> bool:
    return bool(case.roi or case.roi_center_mm or case.roi_bbox_mm)


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    try:
        import pandas as pd

        if pd.isna(v):  # pd.NA / NaN / NaT
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _sources(case: CaseSpec, localiser: str = "") -> dict[str, str]:
    from distmsfa.io.readers import source_checksum

    out = {"t1": source_checksum(case.t1, case.t1_series, "t1"), "fs": source_checksum(case.fs, case.fs_series, "fs")}
    if not _has_roi(case):
        if not localiser:
            raise ImageReadError("roi: no ROI given (roi, roi_center_mm or roi_bbox_mm) and no --localiser to predict one")
        from distmsfa.localiser.store import localiser_checksum

        out["roi"] = json.dumps({"predicted_by": localiser_checksum(localiser)})
        return out
    out["roi"] = source_checksum(case.roi, None, "roi") if case.roi else json.dumps(
        {"center": case.roi_center_mm, "bbox": case.roi_bbox_mm})
    return out


def _can_skip(root: str, prev: dict, sources: dict, fingerprint: str) -> bool:
    if not prev or prev.get("fingerprint") != fingerprint:
        return False
    if json.loads(prev.get("source_sha256") or "{}") != sources:
        return False
    try:
        data = dsindex.read_bytes(root, prev["pair_path"])
        dsindex.read_bytes(root, prev["roi_path"])
    except (OSError, KeyError):
        return False
    return dsindex.sha256_bytes(data) == prev.get("pair_sha256")


def _same_voxels(a: sitk.Image, b: sitk.Image) -> bool:
    if a.GetSize() != b.GetSize():
        return False
    import numpy as np

    return bool(np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))


def run_case(task: dict) -> dict:
    """Do the work; raises on a bad case (``process_case`` catches)."""
    from distmsfa.io.readers import read_image, read_label_map

    if task.get("threads"):
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(task["threads"]))
    case = CaseSpec.from_dict(task["case"])
    cfg = PreprocessConfig.from_dict(task["cfg"])
    root, fp = task["root"], task["fingerprint"]
    prev = json.loads(task["previous"]) if task.get("previous") else None
    sources = _sources(case, task.get("localiser", ""))
    if prev and _can_skip(root, prev, sources, fp):
        prev.update(label=case.label, patient_id=case.patient_id, site=case.site)
        return {"case_id": case.case_id, "status": "skipped", "reason": "", "row_json": json.dumps(prev)}
    if sources["t1"] == sources["fs"]:
        raise ImageReadError("t1 and fs are byte-identical sources; fs must be the fat-suppressed (STIR) series")
    t1 = read_image(case.t1, case.t1_series, "t1")
    fs = read_image(case.fs, case.fs_series, "fs")
    check_geometry(t1.image, cfg, "t1")
    check_geometry(fs.image, cfg, "fs")
    if _same_voxels(t1.image, fs.image):
        raise ImageReadError("t1 and fs hold identical images (same grid and voxels); fs must be the "
                             "fat-suppressed (STIR) series")
    predicted = None
    if _has_roi(case):
        roi = Roi(label_map=read_label_map(case.roi).image if case.roi else None,
                  center_mm=case.roi_center_mm, bbox_mm=case.roi_bbox_mm)
    else:  # no ROI in the manifest: the localiser's (raises RoiPredictionError when implausible)
        from distmsfa.localiser.store import cached_localiser, predicted_roi_nifti
        from distmsfa.localiser.model import predict_roi

        if task.get("threads"):
            import torch

            torch.set_num_threads(int(task["threads"]))
        label_map, predicted = predict_roi(cached_localiser(task["localiser"]), t1.image, fs.image)
        roi = Roi(label_map=label_map)
    res = preprocess_images(t1.image, fs.image, roi, cfg, task["spacing_dhw"])
    pair_rel, roi_rel = f"pairs/{case.case_id}.npy", f"rois/{case.case_id}.npy"
    pair_sha = dsindex.save_array(root, pair_rel, res.pair)
    dsindex.save_array(root, roi_rel, res.roi)
    row = {
        "case_id": case.case_id, "patient_id": case.patient_id, "label": case.label, "site": case.site,
        "fold": None, "is_external": False, "shape": list(res.pair.shape),
        "spacing_mm": list(res.spacing_dhw), "crop_origin_mm": list(res.crop_origin_mm),
        "crop_size_mm": list(res.crop_size_mm), "crop_direction": list(res.crop_direction),
        "source_sha256": json.dumps(sources, sort_keys=True), "fingerprint": fp,
        "pair_path": pair_rel, "roi_path": roi_rel, "pair_sha256": pair_sha,
        "fs_coverage": res.fs_coverage, "t1_coverage": res.t1_coverage,
        "roi_kind": "label_map" if case.roi or predicted else ("center" if case.roi_center_mm else "bbox"),
        "roi_source": "predicted" if predicted else "given",
    }
    if predicted is not None:  # the predicted label map, for a radiologist to check
        pred_rel = f"predicted_rois/{case.case_id}.nii.gz"
        dsindex.write_bytes_atomic(root, pred_rel, predicted_roi_nifti(label_map))
        row["roi_prediction"] = json.dumps({"path": pred_rel, "centroids_mm": predicted["centroids_mm"],
                                            "volumes_ml": predicted["volumes_ml"]})
    return {"case_id": case.case_id, "status": "done", "reason": "", "row_json": json.dumps(row)}


_ABS_PATH = re.compile(r"""(?<![\w.-])(?:[A-Za-z]:)?(?:[/\\][^/\\\s"'()]+)+[/\\]([^/\\\s"'()]+)""")


def scrub_paths(text: str) -> str:
    """Machine paths in a message (a library's, e.g. ITK's "... for "/data/x/t1.nii.gz"")
    cut to the file name: messages carry case ids and file names, not where data lives."""
    return _ABS_PATH.sub(r"\1", text)


def process_case(task: dict) -> dict:
    """``run_case`` that never raises: failures come back as result rows with a reason."""
    cid = task.get("case", {}).get("case_id", "?")
    try:
        return run_case(task)
    except (ImageReadError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    except RuntimeError as exc:  # SimpleITK/ITK: the useful line is the last non-empty one
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = f"SimpleITK: {(lines[-1] if lines else type(exc).__name__)[:200]}"
    except Exception as exc:  # noqa: BLE001 - a bug or a reader crash must not stop other cases
        last = traceback.extract_tb(exc.__traceback__)[-1]
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        reason = f"unexpected {type(exc).__name__}: {first} (at {os.path.basename(last.filename)}:{last.lineno})"
    return {"case_id": cid, "status": "failed", "reason": scrub_paths(reason), "row_json": ""}

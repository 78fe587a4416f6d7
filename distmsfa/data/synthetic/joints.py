"""Per-joint truth of a synthetic cohort: which sacroiliac joint carries the axSpA findings.

A joint is **positive** when the patient is truly axSpA (``truth.csv:true_label`` = 1, not the
recorded, possibly flipped ``label``) and at least one voxel of an axSpA finding
(``lesion.nii.gz`` codes of ``findings.AXSPA_KINDS``: 1 bmo, 2 erosion, 3 sclerosis,
4 fat_metaplasia) lies in or touches (26-neighbourhood: one voxel of dilation) that joint's
ROI (``roi.nii.gz``: 1 = left joint, 2 = right joint).  Mimics (stir_only, oci, degenerative,
remote_oedema) never make a joint positive, and a non-axSpA patient has no positive joint.
Both masks are on the T1 grid, so no resampling is involved.

An axSpA patient whose findings all miss both ROIs would have two negative joints; the
``left_voxels`` / ``right_voxels`` columns (axSpA-finding voxels in or touching each ROI)
let a caller see such cases (the demo cohort places every axSpA finding at the joint).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distmsfa.data.synthetic.findings import AXSPA_KINDS, CODES

#: ROI label of each joint (docs/synthetic-cohort.md; the same as ``distmsfa.localiser.config.JOINTS``).
ROI_LABELS = {"left": 1, "right": 2}
AXSPA_CODES = tuple(CODES[k] for k in AXSPA_KINDS)


def case_joint_truth(lesion: np.ndarray, roi: np.ndarray, axspa: bool) -> dict:
    """One case's label maps (same grid) -> ``{left, right, left_voxels, right_voxels}``."""
    from scipy import ndimage

    lesion, roi = np.asarray(lesion), np.asarray(roi)
    if lesion.shape != roi.shape:
        raise ValueError(f"lesion mask {lesion.shape} and ROI {roi.shape} are not on the same grid")
    findings = np.isin(lesion, AXSPA_CODES)
    ball = np.ones((3,) * roi.ndim, bool)
    out: dict = {}
    for side, lab in ROI_LABELS.items():
        near = ndimage.binary_dilation(roi == lab, structure=ball)
        n = int(np.count_nonzero(findings & near))
        out[f"{side}_voxels"] = n
        out[side] = int(bool(axspa) and n > 0)
    return out


def joint_truth(cohort_dir: str | os.PathLike[str]):
    """Per-case, per-joint truth of a cohort written by ``generate_cohort``.

    Returns a DataFrame, one row per case of ``manifest.csv``: ``case_id``, ``true_label``,
    ``left``, ``right`` (0/1), ``left_voxels``, ``right_voxels``.  Raises ``FileNotFoundError``
    naming the case when its ``lesion`` or ``roi`` file is missing."""
    import pandas as pd
    import SimpleITK as sitk

    root = Path(cohort_dir)
    manifest = pd.read_csv(root / "manifest.csv", dtype={"case_id": str})
    truth = pd.read_csv(root / "truth.csv", dtype={"case_id": str}).set_index("case_id")["true_label"]
    rows = []
    for rec in manifest.itertuples(index=False):
        paths = {}
        for col in ("lesion", "roi"):
            cell = getattr(rec, col, None)
            p = root / str(cell) if isinstance(cell, str) and cell else None
            if p is None or not p.exists():
                raise FileNotFoundError(f"{rec.case_id}: no {col} label map ({p}); per-joint truth needs both")
            paths[col] = str(p)
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(paths["lesion"]))
        roi = sitk.GetArrayFromImage(sitk.ReadImage(paths["roi"]))
        axspa = int(truth[rec.case_id]) == 1
        rows.append({"case_id": rec.case_id, "true_label": int(axspa), **case_joint_truth(lesion, roi, axspa)})
    return pd.DataFrame(rows, columns=["case_id", "true_label", "left", "right", "left_voxels", "right_voxels"])

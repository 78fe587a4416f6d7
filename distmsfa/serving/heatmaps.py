"""Grad-CAM outputs of the service: a PNG montage and one NIfTI heat map per branch.

Maps come in crop space ``(D, H, W)`` (the model input's grid).  Each is resampled (linear,
0 outside the crop) onto the uploaded T1's own grid, so a viewer overlays the NIfTI on the
upload directly; the crop grid is rebuilt from the answer's preprocessing facts (origin,
spacing, direction), exactly as ``preprocess_images`` defined it.
"""
from __future__ import annotations

import base64
import io
import os
import tempfile

import numpy as np
import SimpleITK as sitk


def crop_image(arr: np.ndarray, facts: dict) -> sitk.Image:
    """A ``(D, H, W)`` crop-space array as an image on the crop grid."""
    img = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    img.SetSpacing(tuple(float(v) for v in facts["spacing_dhw_mm"][::-1]))
    img.SetOrigin(tuple(float(v) for v in facts["crop_origin_mm"]))
    img.SetDirection(tuple(float(v) for v in facts["crop_direction"]))
    return img


def reference_image(geom: dict) -> sitk.Image:
    ref = sitk.Image([int(v) for v in geom["size"]], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(v) for v in geom["spacing"]))
    ref.SetOrigin(tuple(float(v) for v in geom["origin"]))
    ref.SetDirection(tuple(float(v) for v in geom["direction"]))
    return ref


def to_input_space(arr: np.ndarray, facts: dict, t1_geometry: dict) -> sitk.Image:
    """Resample a crop-space map onto the T1 grid (0 outside the crop)."""
    return sitk.Resample(crop_image(arr, facts), reference_image(t1_geometry), sitk.Transform(),
                         sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def nifti_gz_bytes(img: sitk.Image) -> bytes:
    with tempfile.TemporaryDirectory(prefix="distmsfa-cam-") as d:
        p = os.path.join(d, "map.nii.gz")
        sitk.WriteImage(img, p, useCompression=True)
        with open(p, "rb") as fh:
            return fh.read()


def montage_png(maps: dict[str, np.ndarray], pair: np.ndarray, n_slices: int = 5, evidence: dict | None = None) -> bytes:
    """Rows: each branch's map over its sequence (FS branch over FS, others over T1);
    columns: evenly spaced slices of the crop (array axis D).  ``evidence``
    (``joint_evidence`` output): each row is labelled with its left/right shares."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    d = pair.shape[1]
    idx = np.unique(np.linspace(0, d - 1, min(n_slices, d)).round().astype(int))
    names = list(maps)
    fig, axes = plt.subplots(len(names), len(idx), figsize=(2.0 * len(idx), 2.0 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        base = pair[1] if name.lower().startswith("fs") else pair[0]
        for c, k in enumerate(idx):
            ax = axes[r][c]
            ax.imshow(np.asarray(base[k], np.float32), cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.asarray(maps[name][k], np.float32), cmap="jet", vmin=0, vmax=1, alpha=0.4)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ev = (evidence or {}).get(name)
                ax.set_ylabel(name if not ev else f"{name}\nL {ev['left']:.0%} R {ev['right']:.0%}", fontsize=8)
            if r == 0:
                ax.set_title(f"slice {k}", fontsize=8)
    fig.suptitle("Grad-CAM per branch (crop space; research use only)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def render_gradcam(maps: dict[str, np.ndarray], pair: np.ndarray, facts: dict, t1_geometry: dict,
                   evidence: dict | None = None) -> dict:
    """The ``gradcam`` block of an answer: base64 PNG montage + base64 NIfTI per branch."""
    out = {"branches": list(maps), "space": "input t1 grid (NIfTI); montage in crop space",
           "montage_png_base64": base64.b64encode(montage_png(maps, pair, evidence=evidence)).decode("ascii"),
           "heatmaps": {}}
    for name, arr in maps.items():
        img = to_input_space(arr, facts, t1_geometry)
        out["heatmaps"][name] = {"nifti_gz_base64": base64.b64encode(nifti_gz_bytes(img)).decode("ascii"),
                                 "max": float(np.max(arr)) if np.size(arr) else 0.0}
    return out


def gradcam_outputs(maps: dict[str, np.ndarray], pair: np.ndarray, facts: dict, t1_geometry: dict,
                    roi_crop: np.ndarray | None, note: str | None) -> dict:
    """``{"gradcam": render_gradcam block, "joint_evidence": {branch: {left, right, outside, side}} | None,
    "joint_evidence_note": why None}``: each branch's Grad-CAM energy share in the left and
    right joint masks of the crop-grid ROI (given or predicted; ``distmsfa.localiser.joint_evidence``)."""
    evidence = None
    if roi_crop is not None:
        from distmsfa.localiser.evidence import joint_evidence

        evidence = joint_evidence(maps, roi_crop)
    return {"gradcam": render_gradcam(maps, pair, facts, t1_geometry, evidence), "joint_evidence": evidence,
            "joint_evidence_note": None if evidence is not None else note}

"""Write a rendered case as NIfTI files or as DICOM series (one folder per series)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from distmsfa.data.synthetic.acquisition import Grid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def to_image(arr: np.ndarray, grid: Grid) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(grid.spacing)
    img.SetOrigin(grid.origin)
    img.SetDirection(grid.direction)
    return img


def uid(*parts: object) -> str:
    """A deterministic DICOM UID (2.25 + decimal of a hash), at most 64 characters."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(h, "big"))


def write_nifti(arr: np.ndarray, grid: Grid, path: Path) -> None:
    sitk.WriteImage(to_image(arr, grid), str(path), useCompression=True)


def write_dicom_series(arr: np.ndarray, grid: Grid, folder: Path, *, patient_id: str, study_uid: str,
                       series_uid: str, description: str, series_number: int, site: str,
                       field_strength: float) -> None:
    """One single-series folder; geometry from ImagePositionPatient/ImageOrientationPatient
    per slice, so ``sitk.ImageSeriesReader`` rebuilds spacing, origin and direction."""
    folder.mkdir(parents=True, exist_ok=True)
    img = to_image(arr, grid)
    d = grid.matrix
    iop = "\\".join(f"{x:.10f}" for x in (*d[:, 0], *d[:, 1]))
    common = {
        "0008|0060": "MR", "0008|0016": MR_IMAGE_STORAGE, "0008|0070": "distmsfa synthetic",
        "0008|0080": site, "0010|0010": patient_id, "0010|0020": patient_id,
        "0020|000d": study_uid, "0020|000e": series_uid, "0008|103e": description,
        "0020|0011": str(series_number), "0020|0037": iop,
        "0028|0030": f"{grid.spacing[1]:.6f}\\{grid.spacing[0]:.6f}",  # row spacing \ column spacing
        "0018|0050": f"{grid.spacing[2]:.6f}", "0018|0088": f"{grid.spacing[2]:.6f}",
        "0018|0087": f"{field_strength:.1f}", "0020|0052": uid(study_uid, "frame"),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{x:.6f}" for x in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", uid(series_uid, k))
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(sl)

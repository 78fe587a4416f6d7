"""Small geometric phantoms written with SimpleITK: test and benchmark inputs with known geometry.

Shapes are defined in physical LPS millimetres and sampled onto each sequence's own grid
(spacing, size, origin, direction), so a correct physical-space pipeline must bring
them back into register.  Not the synthetic sacroiliac cohort (``distmsfa.data.synthetic``):
these are boxes and spheres with exactly known positions.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # slices stacked along A->P


def grid(size_xyz, spacing_xyz, direction=AXIAL, center_mm=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty float32 image of this geometry whose centre lies at ``center_mm``."""
    img = sitk.Image([int(v) for v in size_xyz], sitk.sitkFloat32)
    img.SetSpacing([float(v) for v in spacing_xyz])
    img.SetDirection([float(v) for v in direction])
    d = np.asarray(direction, float).reshape(3, 3)
    half = (np.asarray(size_xyz) - 1) / 2 * np.asarray(spacing_xyz)
    img.SetOrigin([float(v) for v in np.asarray(center_mm) - d @ half])
    return img


def physical_points(img: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre, in array order."""
    size = img.GetSize()
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in size[::-1]), indexing="ij")
    idx = np.stack([x, y, z], -1) * np.asarray(img.GetSpacing(), np.float32)
    d = np.asarray(img.GetDirection(), np.float32).reshape(3, 3)
    return np.asarray(img.GetOrigin(), np.float32) + idx @ d.T


#: (kind, centre mm, radii/half-sizes mm, t1 value, fs value, roi label)
SHAPES = (
    ("ellipsoid", (0, 0, 0), (140, 90, 120), 0.45, 0.25, 0),  # body
    ("box", (0, 10, 0), (25, 30, 45), 0.85, 0.10, 0),  # sacrum (fatty marrow: T1 bright, FS dark)
    ("box", (55, 10, 0), (8, 25, 40), 0.15, 0.55, 1),  # left joint
    ("box", (-55, 10, 0), (8, 25, 40), 0.15, 0.55, 2),  # right joint
    ("sphere", (45, 5, 10), (9, 9, 9), 0.25, 0.95, 0),  # oedema near the left joint
)


def render(img: sitk.Image, which: str, shift_mm=(0.0, 0.0, 0.0), noise: float = 0.02,
           seed: int = 0) -> sitk.Image:
    """Sample the phantom (``which`` = "t1", "fs" or "roi") onto ``img``'s grid."""
    p = physical_points(img) - np.asarray(shift_mm, np.float32)
    out = np.zeros(p.shape[:3], np.float32)
    col = {"t1": 3, "fs": 4, "roi": 5}[which]
    for shape in SHAPES:
        kind, c, r = shape[0], np.asarray(shape[1], np.float32), np.asarray(shape[2], np.float32)
        q = (p - c) / r
        inside = (q ** 2).sum(-1) <= 1 if kind != "box" else (np.abs(q) <= 1).all(-1)
        val = shape[col]
        if which == "roi" and val == 0:
            continue
        out[inside] = val
    if which != "roi":
        if noise:
            out += np.random.default_rng(seed).normal(0, noise, out.shape).astype(np.float32)
        out = np.clip(out, 0, None) * 1000
    res = sitk.GetImageFromArray(out.astype(np.uint8) if which == "roi" else out.astype(np.int16))
    res.CopyInformation(img)
    return res


def write_case(out_dir: str | os.PathLike[str], case_id: str, *,
               t1_size=(64, 48, 12), t1_spacing=(4.0, 4.0, 8.0), t1_direction: Sequence[float] = AXIAL,
               fs_size=(72, 56, 14), fs_spacing=(3.5, 3.5, 7.0), fs_direction: Sequence[float] = AXIAL,
               fs_center_mm=(3.0, -2.0, 4.0), shift_mm=(0.0, 0.0, 0.0), suffix: str = ".nii.gz",
               seed: int = 0) -> dict[str, str]:
    """Write ``<case>_t1``, ``<case>_fs`` and ``<case>_roi`` images; return their paths.

    The FS sits on its own grid (different spacing, size and centre); ``shift_mm`` moves
    the anatomy of this case (patient position)."""
    os.makedirs(out_dir, exist_ok=True)
    t1g = grid(t1_size, t1_spacing, t1_direction)
    fsg = grid(fs_size, fs_spacing, fs_direction, fs_center_mm)
    paths = {}
    for which, g in (("t1", t1g), ("fs", fsg), ("roi", t1g)):
        path = os.path.join(str(out_dir), f"{case_id}_{which}{suffix}")
        sitk.WriteImage(render(g, which, shift_mm, seed=seed + (which == "fs")), path, useCompression=suffix.endswith(".gz"))
        paths[which] = path
    return paths


def write_dicom_series(img: sitk.Image, folder: str | os.PathLike[str], description: str, uid: str,
                       skip: Sequence[int] = (), extra: dict[str, str] | None = None) -> None:
    """Write ``img`` as a DICOM series ``IM0000.dcm``... with explicit per-slice geometry tags
    (ImagePositionPatient, ImageOrientationPatient), as scanners do; slices in ``skip`` are
    left out (a gapped series), ``extra`` tags go on every slice."""
    os.makedirs(folder, exist_ok=True)
    img = sitk.Cast(img, sitk.sitkInt16)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    iop = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))
    extra = dict(extra or {})
    for k in range(img.GetDepth()):
        if k in skip:
            continue
        # a one-slice 3-D image when SpacingBetweenSlices is given: ITK's writer derives that
        # tag from the image's z spacing (a 2-D slice would get 1)
        sl = img[:, :, k:k + 1] if "0018|0088" in extra else img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR", "0008|103e": description, "0020|000e": uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1", "0020|0037": iop,
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0020|0013": str(k + 1),
            "0018|0050": f"{img.GetSpacing()[2]:.6f}", "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
            "0008|0018": f"{uid}.{k + 1}", **extra,
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(os.path.join(str(folder), f"IM{k:04d}.dcm"))
        writer.Execute(sl)

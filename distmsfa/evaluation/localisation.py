"""Grad-CAM measured, not only drawn: localisation of heat maps against lesion masks.

Two scores per map, per branch (T1, FS, fuse), over the cases that carry a lesion:

* **pointing game** (Zhang et al. 2016): a hit when the map's maximum lies inside the lesion
  mask dilated by ``tolerance_mm`` (default 5 mm: two in-plane voxels and one slice of the
  demo crop, 5 x 2.5 x 2.5 mm), the physical tolerance the metric needs on a coarse grid;
* **energy fraction**: the share of the map's (non-negative) mass inside the mask.

Baselines, on the same masks: a **uniform** map (pointing: the chance that a maximum placed
uniformly at random hits, i.e. the dilated mask's share of the crop; energy: the mask's
share of the crop) and **random blobs** (``n_random`` maps per case, each a few Gaussian
blobs of lesion-like size at random places, seeded; scores averaged). A map that looks
where the lesions are beats both; one that does not, does not.

Masks come from the synthetic cohort's ``lesion.nii.gz`` (codes in docs/synthetic-cohort.md),
resampled (nearest neighbour) onto each case's crop grid, which the dataset index records
(``crop_origin_mm``, ``crop_direction``, ``spacing_mm``, ``shape``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def crop_reference(row: dict[str, Any]):
    """The SimpleITK reference image of a case's crop grid, from its index row."""
    import SimpleITK as sitk

    d, h, w = (int(v) for v in list(row["shape"])[-3:])
    ref = sitk.Image([w, h, d], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(v) for v in list(row["spacing_mm"])[::-1]))
    ref.SetOrigin(tuple(float(v) for v in row["crop_origin_mm"]))
    ref.SetDirection(tuple(float(v) for v in row["crop_direction"]))
    return ref


def lesion_mask_in_crop(lesion_path: str, row: dict[str, Any], codes: Optional[Sequence[int]] = None) -> np.ndarray:
    """The case's lesion label map resampled onto its crop grid: bool (D, H, W).

    ``codes``: which finding codes count (None = every finding > 0)."""
    import SimpleITK as sitk

    lab = sitk.ReadImage(str(lesion_path))
    arr = sitk.GetArrayFromImage(sitk.Resample(lab, crop_reference(row), sitk.Transform(), sitk.sitkNearestNeighbor,
                                               0, sitk.sitkUInt8))
    return np.isin(arr, list(codes)) if codes is not None else arr > 0


def _dilate(mask: np.ndarray, spacing_dhw: Sequence[float], tolerance_mm: float) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    if tolerance_mm <= 0:
        return mask.astype(bool)
    r = [int(np.floor(tolerance_mm / float(s))) for s in spacing_dhw]
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    sp = np.asarray(spacing_dhw, float)
    ball = (zz * sp[0]) ** 2 + (yy * sp[1]) ** 2 + (xx * sp[2]) ** 2 <= tolerance_mm ** 2
    return binary_dilation(mask.astype(bool), structure=ball)


def pointing_hit(cam: np.ndarray, dilated: np.ndarray) -> float:
    """1.0 when the map's maximum is inside the (dilated) mask; ties count as the share of
    the tied maxima inside it (a flat map scores the mask's share, not a lucky 1)."""
    cam = np.asarray(cam, float)
    peak = cam == cam.max()
    return float(dilated[peak].mean())


def energy_fraction(cam: np.ndarray, mask: np.ndarray) -> float:
    cam = np.clip(np.asarray(cam, float), 0, None)
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else float(mask.mean())


def random_blobs(shape: Sequence[int], spacing_dhw: Sequence[float], rng: np.random.Generator, n_blobs: int = 3,
                 sigma_mm: float = 6.0) -> np.ndarray:
    """A map of ``n_blobs`` Gaussian blobs (sigma ``sigma_mm``) at uniformly random places."""
    grids = np.meshgrid(*[np.arange(n) * float(s) for n, s in zip(shape, spacing_dhw)], indexing="ij")
    out = np.zeros(tuple(shape), float)
    for _ in range(n_blobs):
        c = [rng.uniform(0, (n - 1) * float(s)) for n, s in zip(shape, spacing_dhw)]
        out += np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * sigma_mm ** 2))
    return out / out.max()


def localisation_scores(maps: dict[str, np.ndarray], masks: np.ndarray, spacing_dhw: Sequence[float] | np.ndarray,
                        tolerance_mm: float = 5.0, n_random: int = 20, seed: int = 0) -> dict[str, Any]:
    """Scores per branch and the baselines, over the cases whose mask is not empty.

    ``maps``: {branch: (N, D, H, W)}; ``masks``: bool (N, D, H, W); ``spacing_dhw``: (3,) or
    (N, 3) mm.  Returns ``{"n_cases", "tolerance_mm", "branches": {b: {"pointing", "energy"}},
    "uniform": {...}, "random_blobs": {...}}`` (means over cases)."""
    masks = np.asarray(masks, bool)
    n = masks.shape[0]
    sp = np.broadcast_to(np.asarray(spacing_dhw, float), (n, 3))
    keep = [i for i in range(n) if masks[i].any()]
    rng = np.random.default_rng(seed)
    dil = {i: _dilate(masks[i], sp[i], tolerance_mm) for i in keep}
    res: dict[str, Any] = {"n_cases": len(keep), "tolerance_mm": tolerance_mm, "branches": {}}
    for b, m in maps.items():
        m = np.asarray(m, float)
        res["branches"][b] = {
            "pointing": float(np.mean([pointing_hit(m[i], dil[i]) for i in keep])) if keep else float("nan"),
            "energy": float(np.mean([energy_fraction(m[i], masks[i]) for i in keep])) if keep else float("nan")}
    res["uniform"] = {"pointing": float(np.mean([dil[i].mean() for i in keep])) if keep else float("nan"),
                      "energy": float(np.mean([masks[i].mean() for i in keep])) if keep else float("nan")}
    pts, ens = [], []
    for i in keep:
        for _ in range(n_random):
            blob = random_blobs(masks[i].shape, sp[i], rng)
            pts.append(pointing_hit(blob, dil[i]))
            ens.append(energy_fraction(blob, masks[i]))
    res["random_blobs"] = {"pointing": float(np.mean(pts)) if pts else float("nan"),
                           "energy": float(np.mean(ens)) if ens else float("nan"), "n_per_case": n_random}
    return res


def lesion_paths(manifest: str) -> dict[str, str]:
    """case_id -> absolute lesion path from a synthetic cohort's manifest.csv (``lesion`` column)."""
    import os

    import pandas as pd

    df = pd.read_csv(manifest, dtype={"case_id": str})
    if "lesion" not in df.columns:
        raise ValueError(f"{manifest}: no 'lesion' column; lesion masks come with the synthetic cohort "
                         f"(distmsfa demo-data)")
    base = os.path.dirname(os.path.abspath(manifest))
    return {r.case_id: os.path.join(base, r.lesion) for r in df.itertuples() if isinstance(r.lesion, str) and r.lesion}

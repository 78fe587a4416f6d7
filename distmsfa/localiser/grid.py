"""The localiser's coarse grid: one wide field of view per case, T1 and FS sampled onto it.

Tensor contract (``CoarseCase``): ``x`` float32 ``(2, D, H, W)``, channels (T1, FS), each
clipped to its robust percentile window (taken on the sequence's native grid, exactly as
``distmsfa.data.preprocess`` does) and scaled to [0, 1], 0 outside the image; ``y`` uint8
``(D, H, W)`` with 0 background, 1 left joint, 2 right joint (or None without a label map);
``ref`` the grid as a ``sitk.Image`` (spacing, origin, direction: LPS mm), so a predicted
label map is a real image in the patient frame.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from distmsfa.data.preprocess import PreprocessConfig, canonical_direction, intensity_window, scale
from distmsfa.localiser.config import LEFT, RIGHT, LocaliserConfig


@dataclasses.dataclass
class CoarseCase:
    x: np.ndarray  # float32 (2, D, H, W)
    y: np.ndarray | None  # uint8 (D, H, W) or None
    ref: sitk.Image  # the coarse grid (UInt8, zeros); its geometry is what matters
    image_centre_mm: np.ndarray  # (3,) LPS physical centre of the T1


def image_centre(img: sitk.Image) -> np.ndarray:
    """Physical (LPS mm) centre of an image's voxel extent."""
    c = [(s - 1) / 2.0 for s in img.GetSize()]
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint(c), float)


def coarse_grid(t1: sitk.Image, cfg: LocaliserConfig) -> sitk.Image:
    """The localiser grid of a case: T1 axes permuted to ``cfg.orientation``, centred on the T1."""
    direction = canonical_direction(t1.GetDirection(), cfg.orientation)
    spacing_xyz = np.asarray(cfg.spacing_dhw_mm, float)[::-1]
    size_xyz = np.asarray(cfg.grid_size_dhw, int)[::-1]
    origin = image_centre(t1) - direction @ ((size_xyz - 1) / 2.0 * spacing_xyz)
    ref = sitk.Image([int(v) for v in size_xyz], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(v) for v in spacing_xyz))
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetDirection(tuple(float(v) for v in direction.ravel()))
    return ref


def _window_cfg(cfg: LocaliserConfig) -> PreprocessConfig:
    return PreprocessConfig(clip_percentiles=cfg.clip_percentiles, orientation=cfg.orientation)


def sample_image(img: sitk.Image, ref: sitk.Image, cfg: LocaliserConfig, what: str) -> np.ndarray:
    """Window on the native grid, sample (linear) onto ``ref``, scale to [0, 1]."""
    lo, hi = intensity_window(img, _window_cfg(cfg), what)
    res = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, lo, sitk.sitkFloat32)
    return scale(sitk.GetArrayFromImage(res), lo, hi)


def sample_labels(label_map: sitk.Image, ref: sitk.Image) -> np.ndarray:
    """Left/right labels on the coarse grid by partial volume: each joint's binary mask is
    sampled linearly and a voxel takes the joint holding >= half of it (argmax)."""
    fracs = []
    for lab in (LEFT, RIGHT):
        m = sitk.Cast(sitk.Equal(label_map, lab), sitk.sitkFloat32)
        fracs.append(sitk.GetArrayFromImage(sitk.Resample(m, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)))
    f = np.stack(fracs)
    out = (f.argmax(0) + 1).astype(np.uint8)
    out[f.max(0) < 0.5] = 0
    return out


def prepare_case(t1: sitk.Image, fs: sitk.Image, cfg: LocaliserConfig, label_map: sitk.Image | None = None) -> CoarseCase:
    """T1 + FS (+ ROI label map) of one case onto its coarse grid (see module doc)."""
    ref = coarse_grid(t1, cfg)
    x = np.stack([sample_image(t1, ref, cfg, "t1"), sample_image(fs, ref, cfg, "fs")]).astype(np.float32)
    y = sample_labels(label_map, ref) if label_map is not None else None
    return CoarseCase(x=x, y=y, ref=ref, image_centre_mm=image_centre(t1))


def label_centroids_mm(label_map: sitk.Image) -> dict[int, np.ndarray]:
    """Centroid (LPS mm) of each joint label present in a label map (any grid)."""
    arr = sitk.GetArrayViewFromImage(label_map)
    out = {}
    for lab in (LEFT, RIGHT):
        idx = np.argwhere(arr == lab)
        if idx.size:
            cz, cy, cx = idx.mean(axis=0)
            out[lab] = np.asarray(label_map.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz))))
    return out


def index_to_mm(ref: sitk.Image, idx_dhw: np.ndarray) -> np.ndarray:
    """(3,) continuous array index (D, H, W) of ``ref`` to LPS mm."""
    z, y, x = (float(v) for v in idx_dhw)
    return np.asarray(ref.TransformContinuousIndexToPhysicalPoint((x, y, z)), float)

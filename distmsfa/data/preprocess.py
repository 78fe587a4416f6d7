"""Pure preprocessing of one case (SimpleITK + numpy, no Ray, no files written).

Pipeline (``preprocess_images``):

1. check each sequence: plausible spacing and field of view (``check_geometry``, called
   by the case runner on the source headers), finite voxels, not constant; the ROI
   centre inside both sequences;
2. robust intensity window per sequence from its *native* grid: the ``clip_percentiles``
   (of the whole image, or of the Otsu foreground); applied after resampling (step 4):
   clip to the window, scale to [0, 1];
3. build the crop grid: the T1's direction permuted/flipped to the canonical
   ``orientation`` (SimpleITK DICOMOrient, so oblique cosines are kept), the target
   spacing, ``crop_size`` voxels, centred on the ROI centroid (union of labels);
4. resample T1, FS (and the ROI label map, nearest neighbour) straight onto that grid
   in physical space; outside an image the value is 0 (zero padding).

Sampling each source once onto the final crop grid is the same as "reorient, resample
to the target spacing, then crop" but touches only the crop's voxels, and the FS is
aligned to the T1 grid through physical coordinates (identity transform), which is
correct because both sequences come from one session in one scanner frame.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from distmsfa.config import Config, require
from distmsfa.io.errors import ImageReadError

#: The paper's crop ``24 x 320 x 224`` read as (slices, left-right, superior-inferior)
#: in array order (D, H, W) = (A->P slices, S->I, R->L); see docs/preprocessing.md.
from distmsfa.data import PAPER_CROP_DHW  # noqa: E402  (one definition)

_INTERP = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(Config):
    """Parameters of `distmsfa preprocess`; spacing and crop in array order (D, H, W)."""

    target_spacing_mm: tuple[float, float, float] | None = None  # None: dataset fingerprint (median)
    crop_size: tuple[int, int, int] = PAPER_CROP_DHW
    orientation: str = "LIP"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    normalize_region: str = "image"  # "image" | "foreground" (Otsu mask) for the percentiles
    interpolation: str = "linear"  # "linear" | "bspline" for the images (ROI: always nearest)
    n_folds: int = 4
    seed: int = 0
    # Plausibility of a source header for pelvic/sacroiliac MRI (docs/preprocessing.md):
    # voxel spacing on every axis, mm; and the field of view: the two largest physical
    # extents (the in-plane FOV) at least the low value, every extent at most the high one.
    plausible_spacing_mm: tuple[float, float] = (0.1, 15.0)
    plausible_fov_mm: tuple[float, float] = (100.0, 700.0)
    # "ROI extraction" (docs/preprocessing.md, "Masking the crop to the ROI"): None keeps the
    # paper's box crop; a distance in mm zeroes every voxel of the crop farther than that from
    # the ROI label map (or box), so the network sees the joints, not what lies beside them.
    roi_mask_mm: float | None = None

    def __post_init__(self) -> None:
        n = type(self).__name__
        for key in ("plausible_spacing_mm", "plausible_fov_mm"):
            rng = tuple(getattr(self, key))
            require(len(rng) == 2 and 0 < float(rng[0]) < float(rng[1]), n,
                    f"{key} must be [low, high] in mm with 0 < low < high, got {getattr(self, key)!r}")
            object.__setattr__(self, key, (float(rng[0]), float(rng[1])))
        if self.target_spacing_mm is not None:
            sp = tuple(self.target_spacing_mm)
            require(len(sp) == 3 and all(float(v) > 0 for v in sp), n,
                    f"target_spacing_mm must be 3 positive mm values (D,H,W) or null, got {self.target_spacing_mm!r}")
            object.__setattr__(self, "target_spacing_mm", tuple(float(v) for v in sp))
        cs = tuple(self.crop_size)
        require(len(cs) == 3 and all(int(v) == v and v >= 1 for v in cs), n,
                f"crop_size must be 3 positive integers (D,H,W), e.g. [24, 224, 320], got {self.crop_size!r}")
        object.__setattr__(self, "crop_size", tuple(int(v) for v in cs))
        o = str(self.orientation).upper()
        require(len(o) == 3 and {o[0], o[1], o[2]} <= set("LRAPSI")
                and len({c.replace("R", "L").replace("P", "A").replace("I", "S") for c in o}) == 3, n,
                f"orientation must be 3 letters naming each axis once, like 'LIP' or 'RAS', got {self.orientation!r}")
        object.__setattr__(self, "orientation", o)
        lo, hi = (float(v) for v in self.clip_percentiles)
        require(0 <= lo < hi <= 100, n, f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles!r}")
        object.__setattr__(self, "clip_percentiles", (lo, hi))
        require(self.normalize_region in ("image", "foreground"), n,
                f"normalize_region must be 'image' or 'foreground', got {self.normalize_region!r}")
        require(self.interpolation in ("linear", "bspline"), n,
                f"interpolation must be 'linear' or 'bspline', got {self.interpolation!r}")
        require(int(self.n_folds) >= 2, n, f"n_folds must be >= 2, got {self.n_folds!r}")
        if self.roi_mask_mm is not None:
            require(isinstance(self.roi_mask_mm, (int, float)) and not isinstance(self.roi_mask_mm, bool)
                    and 0.0 <= float(self.roi_mask_mm) <= 100.0, n,
                    f"roi_mask_mm must be a distance in mm in [0, 100] (or null for the paper's box crop), "
                    f"got {self.roi_mask_mm!r}")
            object.__setattr__(self, "roi_mask_mm", float(self.roi_mask_mm))


@dataclasses.dataclass(frozen=True)
class Roi:
    """The ROI of a case: a label map, a centre, or an axis-aligned LPS box (mm)."""

    label_map: sitk.Image | None = None
    center_mm: Sequence[float] | None = None
    bbox_mm: Sequence[float] | None = None


@dataclasses.dataclass
class Preprocessed:
    pair: np.ndarray  # float16 (2, D, H, W), (T1, FS), [0, 1]
    roi: np.ndarray  # uint8 (D, H, W), labels kept
    spacing_dhw: tuple[float, float, float]
    crop_origin_mm: tuple[float, float, float]
    crop_size_mm: tuple[float, float, float]
    crop_direction: tuple[float, ...]
    fs_coverage: float  # fraction of the crop inside the FS field of view
    t1_coverage: float


def canonical_direction(direction: Sequence[float], orientation: str) -> np.ndarray:
    """The 3x3 direction of an image with ``direction`` after DICOMOrient(orientation)."""
    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection(tuple(float(v) for v in direction))
    return np.asarray(sitk.DICOMOrient(probe, orientation).GetDirection()).reshape(3, 3)


def canonical_spacing_dhw(spacing_xyz: Sequence[float], direction: Sequence[float], orientation: str) -> tuple[float, ...]:
    """Voxel spacing in canonical array order (D, H, W) from a header's spacing and direction."""
    d = np.asarray(direction, float).reshape(3, 3)
    c = canonical_direction(direction, orientation)
    # canonical axis j is (+/-) source axis i where |c[:, j] . d[:, i]| is ~1
    perm = np.abs(c.T @ d).argmax(axis=1)
    sp = np.asarray(spacing_xyz, float)[perm]
    return tuple(float(v) for v in sp[::-1])


def check_intensities(img: sitk.Image, what: str) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(img)
    finite = np.isfinite(arr)
    if not finite.all():
        n_bad = int(arr.size - finite.sum())
        raise ImageReadError(f"{what}: {n_bad} NaN/Inf voxels; fix the export (NaN/Inf are not valid MR intensities)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise ImageReadError(f"{what}: constant image (every voxel = {lo:g}); the file holds no anatomy")
    return arr


def check_geometry(img: sitk.Image, cfg: PreprocessConfig, what: str) -> None:
    """Refuse a header whose spacing or physical extent is implausible for pelvic MRI
    (a corrupt or mis-scaled header would otherwise give a garbage crop with coverage 1.0)."""
    sp = np.asarray(img.GetSpacing(), float)
    ext = sp * np.asarray(img.GetSize(), float)
    lo, hi = cfg.plausible_spacing_mm
    for axis, v in zip("xyz", sp):
        if not (np.isfinite(v) and lo <= v <= hi):
            raise ImageReadError(
                f"{what}: voxel spacing {v:g} mm along {axis} is outside the plausible {lo:g}-{hi:g} mm for "
                f"sacroiliac MRI (spacing {tuple(round(float(x), 4) for x in sp)}); the header is wrong or this is "
                f"not a pelvic scan (the range is plausible_spacing_mm in the config)")
    flo, fhi = cfg.plausible_fov_mm
    top2 = np.sort(ext)[-2:]
    if ext.max() > fhi or top2.min() < flo:
        bad = ext.max() if ext.max() > fhi else top2.min()
        why = f"larger than {fhi:g} mm" if ext.max() > fhi else f"smaller than the {flo:g} mm a pelvis needs in-plane"
        raise ImageReadError(
            f"{what}: field of view {' x '.join(f'{float(e):.4g}' for e in ext)} mm: {float(bad):.4g} mm is {why} "
            f"(size x spacing from the header); check the header's spacing (the range is plausible_fov_mm in the config)")


def intensity_window(img: sitk.Image, cfg: PreprocessConfig, what: str) -> tuple[float, float]:
    """The robust (low, high) clip values of one sequence, from its native grid."""
    arr = check_intensities(img, what)
    vals = arr
    if cfg.normalize_region == "foreground":
        mask = sitk.GetArrayViewFromImage(sitk.OtsuThreshold(img, 0, 1))
        if mask.sum() > 100:
            vals = arr[mask > 0]
    # ~1M evenly strided voxels: percentiles are stable and clinical matrices stay fast
    flat = vals.ravel()
    if flat.size > 2_000_000:
        flat = flat[:: max(1, flat.size // 1_000_000)]
    lo, hi = (float(v) for v in np.percentile(flat, cfg.clip_percentiles))
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    return lo, hi


def scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((arr.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def normalize(img: sitk.Image, cfg: PreprocessConfig, what: str) -> sitk.Image:
    """Clip to robust percentiles and scale to [0, 1] on the native grid (geometry kept)."""
    lo, hi = intensity_window(img, cfg, what)
    res = sitk.GetImageFromArray(scale(sitk.GetArrayViewFromImage(img), lo, hi))
    res.CopyInformation(img)
    return res


def _physical_points(size_xyz, spacing_xyz, origin, direction, samples: int | None = None) -> np.ndarray:
    """(N, 3) LPS points of a grid's voxel centres: all, or at most ``samples`` per axis
    spread evenly from the first to the last voxel (per axis: thin slabs stay covered)."""
    axes = [np.arange(n, dtype=np.float64) if samples is None or n <= samples
            else np.linspace(0, n - 1, samples) for n in size_xyz]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return origin + (idx * spacing_xyz) @ np.asarray(direction).reshape(3, 3).T


def _inside(img: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """Which physical points fall inside ``img``'s voxel extent (half a voxel beyond centres)."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    cidx = (pts - np.asarray(img.GetOrigin())) @ d / np.asarray(img.GetSpacing())
    size = np.asarray(img.GetSize())
    return ((cidx >= -0.5) & (cidx <= size - 0.5)).all(axis=1)


def _overlap(a: sitk.Image, b: sitk.Image) -> bool:
    pts = _physical_points(a.GetSize(), np.asarray(a.GetSpacing()), np.asarray(a.GetOrigin()), a.GetDirection(), 24)
    return bool(_inside(b, pts).any())


def roi_center(roi: Roi, t1: sitk.Image) -> np.ndarray:
    """ROI centroid in LPS mm (union of every label > 0); checks it lies in the T1."""
    if roi.label_map is not None:
        lab = sitk.GetArrayViewFromImage(roi.label_map)
        idx = np.argwhere(lab > 0)
        if idx.size == 0:
            raise ImageReadError("roi: label map is empty (no voxel > 0); draw the sacroiliac ROI or give roi_center_mm")
        cz, cy, cx = idx.mean(axis=0)
        center = np.asarray(roi.label_map.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz))))
    elif roi.center_mm is not None:
        center = np.asarray(roi.center_mm, float)
    elif roi.bbox_mm is not None:
        b = np.asarray(roi.bbox_mm, float)
        center = (b[:3] + b[3:]) / 2
    else:
        raise ImageReadError("roi: no ROI given (roi, roi_center_mm or roi_bbox_mm)")
    if not _inside(t1, center[None])[0]:
        o = np.round(center, 1).tolist()
        raise ImageReadError(f"roi: ROI centre {o} mm lies outside the t1 image; check the ROI file/coordinates belong to this case")
    return center


def roi_neighbourhood(mask: np.ndarray, spacing_dhw: Sequence[float], distance_mm: float) -> np.ndarray:
    """Boolean (D, H, W): the voxels within ``distance_mm`` (physical, anisotropic spacing) of
    a voxel of ``mask`` (any label > 0)."""
    from scipy import ndimage

    inside = np.asarray(mask) > 0
    if not inside.any():
        return inside
    dist = ndimage.distance_transform_edt(~inside, sampling=[float(v) for v in spacing_dhw])
    return dist <= float(distance_mm) + 1e-6


def preprocess_images(t1: sitk.Image, fs: sitk.Image, roi: Roi, cfg: PreprocessConfig,
                      spacing_dhw: Sequence[float]) -> Preprocessed:
    """Turn one case's T1, FS and ROI into the aligned, cropped, scaled pair (see module doc)."""
    if not (_overlap(t1, fs) or _overlap(fs, t1)):  # both ways: a small FS inside a big T1
        raise ImageReadError("t1 and fs have no physical overlap (different patients, sessions or frames of reference?)")
    center = roi_center(roi, t1)
    if not _inside(fs, center[None])[0]:
        o = np.round(center, 1).tolist()
        raise ImageReadError(f"fs: the ROI centre {o} mm lies outside the fs field of view; both sequences must "
                             f"cover the ROI (is the fs from the same session and frame of reference?)")
    t1_win = intensity_window(t1, cfg, "t1")
    fs_win = intensity_window(fs, cfg, "fs")

    direction = canonical_direction(t1.GetDirection(), cfg.orientation)
    spacing_xyz = np.asarray(spacing_dhw, float)[::-1]
    size_xyz = np.asarray(cfg.crop_size, int)[::-1]
    origin = center - direction @ ((size_xyz - 1) / 2.0 * spacing_xyz)

    ref = sitk.Image([int(v) for v in size_xyz], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(v) for v in spacing_xyz))
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetDirection(tuple(float(v) for v in direction.ravel()))

    def sample(img: sitk.Image, interp: int, pixel: int, outside: float = 0.0) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), interp, outside, pixel))

    # Resample the raw intensities, then clip/scale the crop only: the same as scaling the
    # native image first (linear interpolation commutes with the affine scaling; only
    # voxels next to clipped extremes differ) at a fraction of the voxels.  Outside the
    # image the low clip value is used, so padding becomes exactly 0 after scaling.
    interp = _INTERP[cfg.interpolation]
    t1c = scale(sample(t1, interp, sitk.sitkFloat32, t1_win[0]), *t1_win)
    fsc = scale(sample(fs, interp, sitk.sitkFloat32, fs_win[0]), *fs_win)

    pts = _physical_points(size_xyz, spacing_xyz, origin, direction.ravel(), samples=32)
    fs_cov = float(_inside(fs, pts).mean())
    t1_cov = float(_inside(t1, pts).mean())
    if fs_cov == 0.0 and not fsc.any():
        raise ImageReadError("fs: does not cover any of the crop around the ROI (field of view misses the ROI)")

    if roi.label_map is not None:
        mask = sample(roi.label_map, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
        if not mask.any():
            mm = tuple(round(float(v), 1) for v in np.asarray(cfg.crop_size) * np.asarray(spacing_dhw, float))
            raise ImageReadError(
                f"roi: no ROI voxel falls inside the {mm} mm (D,H,W) crop centred on the ROI centroid; "
                f"the ROI is wider than the crop: enlarge crop_size or the target spacing"
            )
    elif roi.bbox_mm is not None:
        b = np.asarray(roi.bbox_mm, float)
        allp = _physical_points(size_xyz, spacing_xyz, origin, direction.ravel())
        inside = ((allp >= b[:3]) & (allp <= b[3:])).all(axis=1)
        mask = inside.reshape(tuple(size_xyz)).transpose(2, 1, 0).astype(np.uint8)
    else:  # a centre gives no extent: the mask stays empty (documented)
        if cfg.roi_mask_mm is not None:
            raise ImageReadError(f"roi: only a centre was given, but this preprocessing masks the crop to the ROI "
                                 f"(roi_mask_mm={cfg.roi_mask_mm:g}); give the ROI as a label map (or a box), or use a "
                                 f"localiser to predict one")
        mask = np.zeros(tuple(cfg.crop_size), np.uint8)

    pair = np.stack([t1c, fsc])
    if cfg.roi_mask_mm is not None:
        pair = pair * roi_neighbourhood(mask, spacing_dhw, cfg.roi_mask_mm)[None]

    return Preprocessed(
        pair=pair.astype(np.float16),
        roi=mask.astype(np.uint8),
        spacing_dhw=tuple(float(v) for v in spacing_dhw),
        crop_origin_mm=tuple(float(v) for v in origin),
        crop_size_mm=tuple(float(v) for v in np.asarray(cfg.crop_size) * np.asarray(spacing_dhw, float)),
        crop_direction=tuple(float(v) for v in direction.ravel()),
        fs_coverage=fs_cov,
        t1_coverage=t1_cov,
    )

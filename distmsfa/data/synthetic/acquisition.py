"""Acquisition: place each sequence's coronal-oblique grid, sample the phantom on it, and add
the scanner's point-spread function, coil bias field, Rician noise and intensity scale.

Grids are coronal slabs like DICOM coronal series: index axis x (columns) runs to patient
Left, y (rows) to Inferior, z (slices) to Posterior ("LIP"), tilted by the slab's
obliquity.  Arrays follow SimpleITK's numpy order ``(z, y, x)``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from distmsfa.data.synthetic.anatomy import Anatomy, rotation
from distmsfa.data.synthetic.findings import CODES, Lesion, lesion_bounds, membership
from distmsfa.data.synthetic.sites import AcquisitionProfile, SiteProfile

#: coronal "LIP": columns of the direction matrix = LPS direction of index axes x, y, z
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

#: Normal tissue (T1 relative to fatty marrow ~0.92; FS water signal; fat fraction).
TISSUES: dict[str, tuple[float, float, float]] = {
    "fat": (1.05, 0.02, 1.0),
    "muscle": (0.38, 0.22, 0.05),
    "marrow": (0.92, 0.06, 0.85),
    "cortex": (0.06, 0.03, 0.0),
    "cleft": (0.30, 0.42, 0.0),
    "ligament": (0.28, 0.12, 0.1),
    "vessel": (0.12, 0.75, 0.0),
    "foramen": (0.78, 0.25, 0.7),
}


@dataclasses.dataclass(frozen=True)
class Grid:
    """One image grid: ``direction`` columns are the LPS directions of index axes x, y, z."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    direction: tuple[float, ...]  # 9 values, row-major (SimpleITK SetDirection order)

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def slice_points(self, k: float) -> np.ndarray:
        """LPS points ``(ny, nx, 3)`` of slice position ``k`` (fractional allowed)."""
        nx, ny, _ = self.size
        d = self.matrix * np.asarray(self.spacing)[None, :]
        i = np.arange(nx, dtype=np.float32)
        j = np.arange(ny, dtype=np.float32)
        base = np.asarray(self.origin, dtype=np.float32) + (k * d[:, 2]).astype(np.float32)
        return (base + j[:, None, None] * d[:, 1].astype(np.float32)
                + i[None, :, None] * d[:, 0].astype(np.float32))


def make_grid(center_lps: np.ndarray, rot: np.ndarray, spacing: tuple[float, float, float],
              size: tuple[int, int, int]) -> Grid:
    """A grid of ``size`` voxels centred on ``center_lps`` with direction ``rot @ CORONAL``."""
    d = rot @ CORONAL
    half = (np.asarray(size, dtype=np.float64) - 1) / 2 * np.asarray(spacing)
    origin = np.asarray(center_lps) - d @ half
    return Grid(tuple(float(x) for x in origin), tuple(float(s) for s in spacing),
                tuple(int(s) for s in size), tuple(float(x) for x in d.reshape(-1)))


def site_grids(rng: np.random.Generator, anat: Anatomy, prof: AcquisitionProfile,
               site: SiteProfile) -> dict[str, Grid]:
    """T1 and FS grids of one study: a shared slab obliquity (the technologist aligns the
    slab to the sacrum), each sequence with its own spacing, matrix, field of view, origin
    and a slight extra tilt."""
    slab = rotation(rng.normal(0, 2.0), rng.normal(0, 1.5), 0.0) @ np.asarray(anat.rotation)
    grids = {}
    for seq in ("t1", "fs"):
        sp = np.asarray(getattr(prof, f"{seq}_spacing_xyz"), dtype=np.float64)
        fov = sp * np.asarray(getattr(prof, f"{seq}_size_xyz"))
        sp = sp * np.array([site.inplane_scale, site.inplane_scale, site.slice_scale])
        size = np.maximum(np.round(fov / sp), 4).astype(int)
        extra = rotation(rng.normal(0, 1.0), rng.normal(0, 0.7), rng.normal(0, 0.7)) if seq == "fs" else np.eye(3)
        rot = slab @ extra
        shift_local = np.array([rng.uniform(-8, 8), rng.uniform(-3, 3), rng.uniform(-8, 8)])  # (u, w, v)
        center = anat.to_lps(shift_local)
        grids[seq] = make_grid(center, rot, tuple(sp), tuple(size))
    return grids


def _ramp(d: np.ndarray, pix: float) -> np.ndarray:
    return np.clip(d / pix + 0.5, 0.0, 1.0)


def _lerp(a: np.ndarray, b, m: np.ndarray) -> np.ndarray:
    return a + (b - a) * m


def tissue_values(seq: str, site: SiteProfile) -> dict[str, float]:
    return {k: _value(seq, site, *v) for k, v in TISSUES.items()}


def _value(seq: str, site: SiteProfile, t1: float, fs_water: float, fat: float) -> float:
    if seq == "t1":
        return float(np.sign(t1) * abs(t1) ** site.t1_contrast)
    # STIR/FS: water signal plus the fat signal the suppression leaves behind
    return float(fs_water + (1 - site.fat_suppression) * 0.9 * fat)


def render_plane(anat: Anatomy, lesions: list[Lesion], q: np.ndarray, seq: str, site: SiteProfile,
                 pix: float, with_masks: bool = False):
    """Noise-free intensities at local points ``q`` (..., 3); with ``with_masks`` also the
    ROI label map and the memberships ``(code, m)`` of every finding (for the lesion map)."""
    tv = tissue_values(seq, site)
    d = anat.distances(q)
    tex = anat.texture(q)
    img = tv["fat"] * _ramp(d["body"], pix)
    img = _lerp(img, tv["muscle"], _ramp(d["body"] - anat.fat_thickness, pix))
    img = _lerp(img, tv["fat"] * (1 + 0.1 * tex), _ramp(d["pelvic_fat"], pix) * _ramp(d["body"], pix))
    img = _lerp(img, tv["vessel"], _ramp(d["vessel"], pix))
    img = _lerp(img, tv["ligament"], _ramp(d["ligament"], pix))
    bone = np.maximum(d["sacrum"], d["ilium"])
    m_bone = _ramp(bone, pix)
    m_marrow = _ramp(bone - anat.cortex, pix)
    marrow = np.full(q.shape[:-1], tv["marrow"], dtype=np.float32) * (1 + (0.05 if seq == "t1" else 0.25) * tex)
    masks = []
    m_cleft = _ramp(d["cleft"], pix)
    for les in lesions:
        m = membership(les, q, tex, pix)
        target = _value(seq, site, les.t1, les.fs_water, les.fat)
        if les.kind == "erosion":
            # erosions break the cortex at the joint margin and fill with fluid/granulation
            masks.append((CODES[les.kind], m * np.maximum(m_bone, m_cleft)))
            continue
        marrow = np.maximum(_lerp(marrow, target, m * les.strength), 0.0)
        masks.append((CODES[les.kind], m * m_marrow))
    img = _lerp(img, tv["cortex"], m_bone)
    img = _lerp(img, marrow, m_marrow)
    img = _lerp(img, tv["foramen"], _ramp(d["foramen"], pix))
    img = _lerp(img, tv["cleft"], m_cleft)
    for les, (_, m) in zip(lesions, masks):
        if les.kind == "erosion":
            img = _lerp(img, _value(seq, site, les.t1, les.fs_water, les.fat), m * min(les.strength, 1.0))
    if not with_masks:
        return img.astype(np.float32), None, None
    return img.astype(np.float32), anat.roi_labels(q, d), masks


def render_sequence(anat: Anatomy, lesions: list[Lesion], grid: Grid, seq: str, site: SiteProfile,
                    prof: AcquisitionProfile, rng: np.random.Generator, bias_coef: np.ndarray,
                    with_masks: bool = False):
    """Sample one sequence on ``grid``: returns int16 image array ``(z, y, x)`` and, with
    ``with_masks``, the ROI label map and lesion label map on the same grid."""
    nx, ny, nz = grid.size
    pix = float(min(grid.spacing[0], grid.spacing[1]))
    nsub = prof.slice_subsamples
    offsets = (np.arange(nsub) + 0.5) / nsub - 0.5
    img = np.zeros((nz, ny, nx), dtype=np.float32)
    roi = np.zeros((nz, ny, nx), dtype=np.uint8) if with_masks else None
    lab = np.zeros((nz, ny, nx), dtype=np.uint8) if with_masks else None
    bias = np.zeros((nz, ny, nx), dtype=np.float32)
    centers = [(les, anat.to_lps(np.array(les.center)), lesion_bounds(les)) for les in lesions]
    normal = grid.matrix[:, 2]
    for k in range(nz):
        p0 = np.asarray(grid.origin) + grid.matrix[:, 2] * grid.spacing[2] * k
        # only findings whose bounding sphere reaches this slab position are evaluated
        near = [les for les, c, r in centers if abs(float(np.dot(c - p0, normal))) < r + grid.spacing[2]]
        acc = np.zeros((ny, nx), dtype=np.float32)
        roi_frac = np.zeros((3, ny, nx), dtype=np.float32)
        les_frac = np.zeros((len(near), ny, nx), dtype=np.float32)
        for off in offsets:
            q = anat.to_local(grid.slice_points(k + off))
            plane, r, ms = render_plane(anat, near, q, seq, site, pix, with_masks=with_masks)
            acc += plane
            if with_masks:
                for lab_value in (1, 2):
                    roi_frac[lab_value] += r == lab_value
                for i, (_, m) in enumerate(ms):
                    les_frac[i] += m
        img[k] = acc / nsub
        bias[k] = _bias(q, bias_coef)  # smooth: the last sub-sample is close enough
        if with_masks:
            # masks of the voxel: at least half of its volume (over the slice sub-samples)
            roi[k] = np.where(roi_frac[1] >= roi_frac[2], 1, 2) * ((roi_frac[1] + roi_frac[2]) >= nsub / 2)
            for les, frac in zip(near, les_frac):
                lab[k][frac >= nsub / 2] = CODES[les.kind]
    if site.psf_sigma_vox > 0:
        img = ndimage.gaussian_filter(img, sigma=(0, site.psf_sigma_vox, site.psf_sigma_vox))
    img *= bias
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    ref = 0.92 if seq == "t1" else 0.22 * 4
    sigma = (site.noise_t1 if seq == "t1" else site.noise_fs) * ref
    re = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    im = rng.normal(0, sigma, img.shape).astype(np.float32)
    mag = np.sqrt(re * re + im * im)
    scale = site.t1_scale / 0.92 if seq == "t1" else site.fs_scale / 0.8
    out = np.clip(np.rint(mag * scale), 0, 32767).astype(np.int16)
    return out, roi, lab


def sample_bias(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Coefficients of a smooth log-bias: linear + quadratic in local coordinates, with a
    posterior brightening like a posterior spine/body array coil."""
    c = rng.normal(0, 1, 9)
    c /= np.linalg.norm(c) + 1e-9
    return np.concatenate([c * amplitude, [amplitude * rng.uniform(0.3, 0.8)]])


def _bias(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    x, y, z = q[..., 0] / 100, q[..., 1] / 100, q[..., 2] / 100
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_b = sum(ci * t for ci, t in zip(c[:9], terms)) + c[9] * y  # y = w, posterior brighter
    return np.exp(log_b).astype(np.float32)

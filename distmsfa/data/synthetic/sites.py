"""Acquisition profiles (grids) and per-site scanner profiles of the synthetic cohort.

An :class:`AcquisitionProfile` fixes the nominal grid of each sequence (spacing and matrix,
SimpleITK ``(x, y, z)`` order = (column, row, slice) of a coronal slab); a
:class:`SiteProfile` is one hospital's scanner: it scales the grid, and sets contrast,
noise, bias field and fat-suppression quality, like the paper's two hospitals
(TAH 3.0 T, NHH 1.5 T).
"""
from __future__ import annotations

import dataclasses

from distmsfa.config import Config, require


@dataclasses.dataclass(frozen=True)
class AcquisitionProfile(Config):
    """Nominal grids of the two sequences (before a site's resolution scaling).

    Spacings are millimetres in SimpleITK order ``(x, y, z)`` = (column, row, slice) of a
    coronal slab: x runs to patient left, y to inferior, z (the slice axis) to posterior.
    """

    name: str = "demo"
    t1_spacing_xyz: tuple[float, float, float] = (1.6, 1.6, 4.0)
    t1_size_xyz: tuple[int, int, int] = (128, 128, 16)
    fs_spacing_xyz: tuple[float, float, float] = (1.3, 1.3, 3.5)
    fs_size_xyz: tuple[int, int, int] = (112, 112, 18)
    #: samples per voxel along the slice axis (thick-slice partial volume)
    slice_subsamples: int = 2

    def __post_init__(self) -> None:
        n = type(self).__name__
        for key in ("t1_spacing_xyz", "fs_spacing_xyz"):
            v = getattr(self, key)
            require(len(v) == 3 and all(s > 0 for s in v), n, f"{key} must be 3 positive mm values, got {v}")
        for key in ("t1_size_xyz", "fs_size_xyz"):
            v = getattr(self, key)
            require(len(v) == 3 and all(int(s) >= 4 for s in v), n, f"{key} must be 3 sizes >= 4, got {v}")
        require(1 <= self.slice_subsamples <= 8, n, "slice_subsamples must be in 1..8")

    def fov_mm(self, seq: str) -> tuple[float, float, float]:
        sp = getattr(self, f"{seq}_spacing_xyz")
        sz = getattr(self, f"{seq}_size_xyz")
        return tuple(a * b for a, b in zip(sp, sz))  # type: ignore[return-value]


#: Fast default: coarse grids so that 120 cases generate and preprocess in seconds on 2 cores.
DEMO = AcquisitionProfile()
#: Realistic clinical grids (Table 2 of the paper; used by the benchmarks).
CLINICAL = AcquisitionProfile(
    name="clinical",
    t1_spacing_xyz=(0.45, 0.45, 4.0),
    t1_size_xyz=(512, 512, 20),
    fs_spacing_xyz=(0.35, 0.35, 3.0),
    fs_size_xyz=(448, 448, 24),
    slice_subsamples=3,
)
PROFILES: dict[str, AcquisitionProfile] = {"demo": DEMO, "clinical": CLINICAL}


def get_profile(name: str) -> AcquisitionProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown acquisition profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclasses.dataclass(frozen=True)
class SiteProfile(Config):
    """One hospital's scanner.  Noise levels are Rician sigma relative to the sequence's
    reference tissue (T1: fatty marrow; FS: muscle x 4); ``fat_suppression`` is the fraction
    of fat signal removed on FS (1 = perfect)."""

    name: str = "TAH"
    field_strength_t: float = 3.0
    weight: float = 1.0  # share of the cohort's cases, before normalisation
    t1_scale: float = 1200.0  # stored value of fatty marrow on T1 (int16 units)
    fs_scale: float = 900.0  # stored value of fluid on FS
    noise_t1: float = 0.035
    noise_fs: float = 0.05
    bias_amplitude: float = 0.15  # coil sensitivity: +-fraction across the field of view
    fat_suppression: float = 0.9
    t1_contrast: float = 1.0  # gamma applied to the T1 tissue values (>1 darkens intermediates)
    inplane_scale: float = 1.0  # multiplies the profile's in-plane spacing (FOV kept)
    slice_scale: float = 1.0  # multiplies the slice thickness (slab thickness kept)
    psf_sigma_vox: float = 0.5  # in-plane blur of the point-spread function, voxels

    def __post_init__(self) -> None:
        n = f"{type(self).__name__}({self.name!r})"
        require(bool(self.name) and self.name.replace("_", "").isalnum(), n,
                "name must be a non-empty alphanumeric site code (e.g. 'TAH')")
        require(self.weight > 0, n, "weight must be > 0")
        require(self.t1_scale > 0 and self.fs_scale > 0, n, "t1_scale and fs_scale must be > 0")
        require(0 <= self.noise_t1 < 1 and 0 <= self.noise_fs < 1, n, "noise levels must be in [0, 1)")
        require(0 <= self.bias_amplitude < 0.8, n, "bias_amplitude must be in [0, 0.8)")
        require(0.5 <= self.fat_suppression <= 1, n, "fat_suppression must be in [0.5, 1]")
        require(0.3 <= self.t1_contrast <= 3, n, "t1_contrast must be in [0.3, 3]")
        require(0.5 <= self.inplane_scale <= 2 and 0.5 <= self.slice_scale <= 2, n,
                "inplane_scale and slice_scale must be in [0.5, 2]")
        require(0 <= self.psf_sigma_vox <= 3, n, "psf_sigma_vox must be in [0, 3]")


#: Built-in sites.  TAH and NHH follow the paper (3.0 T internal, 1.5 T external); SZH is a
#: third, different scanner for multi-site experiments.
BUILTIN_SITES: tuple[SiteProfile, ...] = (
    SiteProfile(name="TAH", field_strength_t=3.0, weight=0.8),
    SiteProfile(
        name="NHH", field_strength_t=1.5, weight=0.2, t1_scale=820.0, fs_scale=610.0,
        noise_t1=0.06, noise_fs=0.085, bias_amplitude=0.25, fat_suppression=0.82,
        t1_contrast=0.85, inplane_scale=1.2, slice_scale=1.1, psf_sigma_vox=0.7,
    ),
    SiteProfile(
        name="SZH", field_strength_t=3.0, weight=0.3, t1_scale=2400.0, fs_scale=1500.0,
        noise_t1=0.045, noise_fs=0.06, bias_amplitude=0.2, fat_suppression=0.94,
        t1_contrast=1.2, inplane_scale=0.9, slice_scale=1.0, psf_sigma_vox=0.4,
    ),
)

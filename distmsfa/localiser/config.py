"""Configuration of the sacroiliac-joint localiser (network, coarse grid, plausibility, training)."""
from __future__ import annotations

import dataclasses

from distmsfa.config import Config, require

#: Label values of the ROI label maps (ITK-SNAP style, as the synthetic cohort writes them).
LEFT, RIGHT = 1, 2
JOINTS = {"left": LEFT, "right": RIGHT}


@dataclasses.dataclass(frozen=True)
class LocaliserConfig(Config):
    """What the localiser sees and how it decides that a prediction is plausible.

    The input grid: ``grid_size_dhw`` voxels at ``spacing_dhw_mm`` (array order D, H, W of the
    canonical ``orientation``, like the crop), centred on the T1's physical centre, with the
    T1's (oblique) axes permuted to ``orientation``.  The default 8 x 32 x 32 voxels at
    10 x 8 x 8 mm covers 80 x 256 x 256 mm: the whole slab and in-plane field of view of both
    synthetic profiles and of typical clinical SIJ protocols (FOV 200-260 mm).  That coarse
    grid suffices because centroids are probability-weighted (sub-voxel); finer grids
    (e.g. 16 x 64 x 64 at 5 x 4 x 4 mm) are an option at 8x the cost (docs/localiser.md).
    """

    grid_size_dhw: tuple[int, int, int] = (8, 32, 32)
    spacing_dhw_mm: tuple[float, float, float] = (10.0, 8.0, 8.0)
    orientation: str = "LIP"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    #: MONAI UNet: feature channels per level and residual units per block
    channels: tuple[int, ...] = (8, 16, 32)
    num_res_units: int = 0
    #: normalised voxel coordinates of these axes (subset of "DHW", "" = none) added as input
    #: channels (CoordConv).  The two joints are mirror images: a convolution alone cannot tell
    #: the patient's left (W) from right (in development, without a W channel the "left" joint
    #: landed on the right joint).  Only W by default: D/H coordinates let the net learn *where
    #: joints usually are* and predict them there on any image, joints or not.
    coord_axes: str = "W"
    #: plausibility of a prediction (each side; volumes of the largest connected component)
    min_joint_volume_ml: float = 4.0
    max_joint_volume_ml: float = 300.0
    min_separation_mm: float = 25.0  # distance between the left and right centroids
    max_separation_mm: float = 180.0
    max_centre_offset_mm: float = 80.0  # ROI centroid from the T1's physical centre

    def __post_init__(self) -> None:
        n = type(self).__name__
        gs = tuple(int(v) for v in self.grid_size_dhw)
        down = 2 ** (len(self.channels) - 1)
        require(len(gs) == 3 and all(v >= down and v % down == 0 for v in gs), n,
                f"grid_size_dhw must be 3 multiples of {down} (2^(levels-1) for {len(self.channels)} "
                f"channel levels), got {self.grid_size_dhw!r}")
        object.__setattr__(self, "grid_size_dhw", gs)
        sp = tuple(float(v) for v in self.spacing_dhw_mm)
        require(len(sp) == 3 and all(v > 0 for v in sp), n, f"spacing_dhw_mm must be 3 positive mm values, got {sp!r}")
        object.__setattr__(self, "spacing_dhw_mm", sp)
        require(len(self.channels) >= 2 and all(int(c) >= 1 for c in self.channels), n,
                f"channels must list >= 2 positive feature counts, e.g. [8, 16, 32, 64], got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        require(int(self.num_res_units) >= 0, n, "num_res_units must be >= 0")
        ax = str(self.coord_axes).upper()
        require(set(ax) <= set("DHW") and len(set(ax)) == len(ax), n,
                f"coord_axes must be a subset of 'DHW' (e.g. 'W', or '' for none), got {self.coord_axes!r}")
        object.__setattr__(self, "coord_axes", "".join(a for a in "DHW" if a in ax))
        lo, hi = (float(v) for v in self.clip_percentiles)
        require(0 <= lo < hi <= 100, n, f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles!r}")
        object.__setattr__(self, "clip_percentiles", (lo, hi))
        require(0 < self.min_joint_volume_ml < self.max_joint_volume_ml, n,
                "need 0 < min_joint_volume_ml < max_joint_volume_ml")
        require(0 <= self.min_separation_mm < self.max_separation_mm, n,
                "need 0 <= min_separation_mm < max_separation_mm")
        require(self.max_centre_offset_mm > 0, n, "max_centre_offset_mm must be > 0")

    @property
    def voxel_ml(self) -> float:
        s = self.spacing_dhw_mm
        return s[0] * s[1] * s[2] / 1000.0


@dataclasses.dataclass(frozen=True)
class LocaliserTrainConfig(Config):
    """Training of one localiser (Adam, Dice + cross-entropy, random shifts and intensity)."""

    epochs: int = 40
    batch_size: int = 2
    lr: float = 1e-2
    weight_decay: float = 1e-5
    seed: int = 0
    #: random integer shift of image and labels together, voxels (D, H, W), each direction
    shift_vox: tuple[int, int, int] = (1, 2, 2)
    #: random per-channel gamma in [1/g, g] and scale in [1 - s, 1 + s]
    gamma: float = 1.4
    intensity_scale: float = 0.15
    #: fraction of training samples replaced by a study without joints (smoothed random noise,
    #: all background), so that the net needs image evidence, not only position, to answer
    negative_fraction: float = 0.1
    threads: int = 0  # torch threads (0: torch's default)

    def __post_init__(self) -> None:
        n = type(self).__name__
        require(int(self.epochs) >= 1, n, "epochs must be >= 1")
        require(int(self.batch_size) >= 1, n, "batch_size must be >= 1")
        require(self.lr > 0, n, "lr must be > 0")
        require(len(self.shift_vox) == 3 and all(int(v) >= 0 for v in self.shift_vox), n,
                "shift_vox must be 3 non-negative integers (D, H, W)")
        object.__setattr__(self, "shift_vox", tuple(int(v) for v in self.shift_vox))
        require(self.gamma >= 1, n, "gamma must be >= 1 (1 = off)")
        require(0 <= self.intensity_scale < 1, n, "intensity_scale must be in [0, 1)")
        require(0 <= self.negative_fraction < 0.5, n, "negative_fraction must be in [0, 0.5)")

"""Voxel-fusion probe nets (issue 15): which inductive bias learns the demo cohort's sign?

The synthetic cohort's label is decided by co-location: voxels that are T1-dark AND
STIR-bright at the same place (docs/synthetic-cohort.md).  A logistic regression on the
fraction of such voxels reaches AUC ~0.95; MSFANet, whose sequences meet only after two
strided blocks, does not get there from 72 training cases.  This net tests the hypothesis
that early, voxel-level fusion before any downsampling is the bias the demo scale needs
(docs/demo-learning.md has the measured probes).

Tensor contract (on top of base.py's):

    x (B, 2, D, H, W), (T1, FS), values in [0, 1]; on a crop masked to the ROI
    (``PreprocessConfig.roi_mask_mm``) the voxels outside the ROI neighbourhood are background
    (0, or a constant after the training augmentation's intensity shift): each sequence's
    per-case minimum is subtracted and the net pools over the voxels where any read sequence
    is above it (all voxels if none is).
    normalize='roi_median': each sequence is divided by its median over those voxels (the
    fatty marrow), so "dark" and "bright" are relative to the case, not to the site's scale.
    fusion='early': one per-voxel MLP (1x1x1 convs) over the concatenated sequences -> it can
        compute "T1 dark AND FS bright" at each voxel; optional 3x3x3 conv; masked pooling.
    fusion='late': one per-voxel MLP per sequence, pooled separately, concatenated after
        pooling -> the head sees each sequence's statistics but not their co-location.
    sequences=('t1',) or ('fs',): the single-sequence controls (one stack).
    Output: {"fuse": (B,)} logit; loss 'bce' on it.

Pooling ``pool``: mean | max | meanmax (both, concatenated) | topk (mean of the top
``topk_frac`` of the ROI voxels, per case).
``erode`` (default 1): the pooled mask loses its in-plane rim of ``erode`` voxels.  The
training augmentation's rotation/zoom resamples bilinearly with zero padding, so the rim of a
masked ROI becomes a blend of tissue and background (dark on both sequences), and a per-voxel
net that pools it learns the augmentation instead of the lesions (measured: docs/demo-learning.md).
``morph`` > 0: a fixed in-plane grey closing of T1 / opening of FS (window morph x morph)
before the MLP, the hand features' removal of thin cortex/cleft lines (no parameters).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from distmsfa.config import Config, require
from distmsfa.models.base import MultiSequenceModel
from distmsfa.models.blocks import build_config, freeze_lists
from distmsfa.models.front import InputFront, roi_mask  # noqa: F401  (roi_mask: re-exported)
from distmsfa.models.losses import make_loss
from distmsfa.models.registry import register_model

_SEQ_SETS = (("t1", "fs"), ("t1",), ("fs",))
POOLS = ("mean", "max", "meanmax", "topk")


@dataclasses.dataclass(frozen=True)
class VoxelFusionConfig(Config):
    sequences: tuple[str, ...] = ("t1", "fs")
    fusion: str = "early"  # early (per-voxel MLP over both) | late (one MLP per sequence, fused after pooling)
    widths: tuple[int, ...] = (16, 16)  # the pointwise (1x1x1) layers
    conv3: int = 0  # >0: width of one 3x3x3 conv after the pointwise layers; 0: none
    normalize: str = "roi_median"  # roi_median | none
    morph: int = 0  # >0: in-plane grey closing (T1) / opening (FS) window; 0: none
    erode: int = 1  # in-plane erosion of the pooled mask, voxels: drops the ROI's rim (module doc)
    pool: str = "meanmax"
    topk_frac: float = 0.05
    dropout: float = 0.0
    head_norm: bool = True  # BatchNorm1d over the pooled features before the linear head
    loss: str = "bce"  # one head: bce (= fuse_only)
    log_weight_bound: float = 3.0

    def __post_init__(self) -> None:
        n = type(self).__name__
        freeze_lists(self, "sequences", "widths")
        require(tuple(self.sequences) in _SEQ_SETS, n, f"sequences must be one of {_SEQ_SETS}, got {self.sequences!r}")
        require(self.fusion in ("early", "late"), n, f"fusion must be 'early' or 'late', got {self.fusion!r}")
        require(len(self.widths) >= 1 and all(isinstance(w, int) and w > 0 for w in self.widths), n,
                f"widths must be >= 1 positive ints (the pointwise layers), got {self.widths!r}")
        require(isinstance(self.conv3, int) and self.conv3 >= 0, n, f"conv3 must be an int >= 0, got {self.conv3!r}")
        require(self.normalize in ("roi_median", "none"), n, f"normalize must be 'roi_median' or 'none', got {self.normalize!r}")
        require(isinstance(self.morph, int) and (self.morph == 0 or (self.morph >= 3 and self.morph % 2 == 1)), n,
                f"morph must be 0 (off) or an odd window >= 3, got {self.morph!r}")
        require(isinstance(self.erode, int) and self.erode >= 0, n, f"erode must be an int >= 0 (voxels), got {self.erode!r}")
        require(self.pool in POOLS, n, f"pool must be one of {POOLS}, got {self.pool!r}")
        require(0.0 < self.topk_frac <= 1.0, n, f"topk_frac must be in (0, 1], got {self.topk_frac}")
        require(0.0 <= self.dropout < 1.0, n, f"dropout must be in [0, 1), got {self.dropout}")
        require(self.loss in ("bce", "fuse_only"), n, f"loss must be one of ('bce', 'fuse_only') (one head), got {self.loss!r}")


PRESETS = {"default": {}, "tiny": {"widths": (8, 8)}, "demo": {}}


def _stack(cin: int, cfg: VoxelFusionConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in cfg.widths:
        layers += [nn.Conv3d(cin, w, 1), nn.ReLU()]
        cin = w
    if cfg.conv3:
        layers += [nn.Conv3d(cin, cfg.conv3, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def _out_width(cfg: VoxelFusionConfig) -> int:
    return cfg.conv3 or cfg.widths[-1]


def masked_pool(f: torch.Tensor, mask: torch.Tensor, pool: str, topk_frac: float) -> torch.Tensor:
    """(B, C, D, H, W) features, (B, 1, D, H, W) mask -> (B, C) or (B, 2C) for meanmax."""
    m = mask.to(f.dtype).flatten(2)
    ff = f.flatten(2)
    n = m.sum(-1).clamp_min(1.0)
    parts = []
    if pool in ("mean", "meanmax"):
        parts.append((ff * m).sum(-1) / n)
    if pool in ("max", "meanmax"):
        parts.append(ff.masked_fill(m == 0, float("-inf")).amax(-1))
    if pool == "topk":
        masked = ff.masked_fill(m == 0, float("-inf"))
        rows = []
        for i in range(ff.shape[0]):  # the ROI size differs per case: k per case
            k = max(1, int(math.ceil(topk_frac * float(n[i, 0]))))
            rows.append(masked[i].topk(k, -1).values.mean(-1))
        parts.append(torch.stack(rows))
    return torch.cat(parts, 1)


class VoxelFeatures(nn.Module):
    """x (B, 2, D, H, W) -> standardized pooled per-voxel features (B, ``out_features``).

    The probe net's body (a separate module so that another network can add it as a path)."""

    def __init__(self, cfg: VoxelFusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sequences = tuple(cfg.sequences)
        self.late = cfg.fusion == "late" and len(self.sequences) == 2
        names = self.sequences if self.late else ("fuse",)
        cin = 1 if self.late else len(self.sequences)
        self.stacks = nn.ModuleDict({s: _stack(cin, cfg) for s in names})
        self.out_features = _out_width(cfg) * (2 if cfg.pool == "meanmax" else 1) * len(names)
        # The pooled statistics differ between cases by small amounts (a lesion fills ~1% of
        # the ROI): standardizing them (as the feature ceiling's StandardScaler does) lets the
        # linear head and the MLP below it learn at a normal learning rate (eps 1e-8: the
        # across-case variance of a mean over thousands of voxels can be below the default 1e-5).
        self.norm = nn.BatchNorm1d(self.out_features, eps=1e-8) if cfg.head_norm else nn.Identity()
        # Parameter-free: adds no state_dict keys (bundles of earlier probes still load).
        self.front = InputFront(self.sequences, cfg.normalize, cfg.morph, cfg.erode)

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read sequences -> (B, S, D, H, W) normalized (+ morphology), and the ROI mask (front.py)."""
        return self.front(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, mask = self.prepare(x)
        if self.late:
            z = torch.cat([masked_pool(self.stacks[s](v[:, i : i + 1]), mask, self.cfg.pool, self.cfg.topk_frac)
                           for i, s in enumerate(self.sequences)], 1)
        else:
            z = masked_pool(self.stacks["fuse"](v), mask, self.cfg.pool, self.cfg.topk_frac)
        return self.norm(z)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        # The last conv of each stack (a per-voxel map at full resolution).
        return {s: [m for m in st if isinstance(m, nn.Conv3d)][-1] for s, st in self.stacks.items()}


class VoxelFusionNet(MultiSequenceModel):
    primary_head = "fuse"

    def __init__(self, cfg: VoxelFusionConfig) -> None:
        super().__init__(make_loss(cfg.loss, ("fuse",), "fuse", cfg.log_weight_bound))
        self.cfg = cfg
        self.sequences = tuple(cfg.sequences)
        self.features = VoxelFeatures(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.features.out_features, 1)

    @property
    def head_names(self):
        return ("fuse",)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fuse": self.fc(self.drop(self.features(x))).squeeze(-1)}

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return self.features.gradcam_layers()


@register_model("voxel_fusion")
def voxel_fusion(**cfg) -> VoxelFusionNet:
    """Per-voxel fusion probe (issue 15); ``fusion``/``sequences`` give the late-fusion and single-sequence controls."""
    return VoxelFusionNet(build_config(VoxelFusionConfig, PRESETS, cfg))

"""Input front: fixed (parameter-free) intensity reference and denoising of the sequences.

Shared by ``voxel_fusion`` (its ``prepare``) and MSFANet / its Baselines (``input_norm``,
``morph``, ``input_erode``).  docs/demo-learning.md found, with per-voxel probe nets on the
masked demo crop, that these steps decide whether a net learns the synthetic sign and transfers
to the external site; docs/models.md ("Input front") gives the choices.

Tensor contract::

    x     (B, C, D, H, W), C >= max index of ``sequences`` + 1, channel order T1 = 0, FS = 1
          (base.SEQUENCE_INDEX); any real dtype; intensities in the preprocessed scale
          ([0, 1], or shifted/scaled by the training augmentation); on a masked crop the
          voxels outside the ROI neighbourhood are background (0, or one constant per case
          and sequence).
    ->  v (B, S, D, H, W) float32, S = len(sequences), in ``sequences`` order:
          1. each case's and sequence's minimum is subtracted (the background becomes 0);
          2. normalize='roi_median': divided by the sequence's median over the ROI (the
             fatty marrow), so values are RATIOS to that median (marrow ~1, STIR-bright ~3-6,
             T1-dark < 1); 'none': background-subtracted intensities;
          3. morph=k: in-plane (H, W) grey closing of T1 / opening of FS, window k x k (removes
             dark / bright lines thinner than k: cortex, joint cleft);
          4. multiplied by the mask: 0 outside it.
        mask (B, 1, D, H, W) bool: the voxels where any of the read sequences is above its
          background (all voxels when none is), minus ``erode`` voxels of in-plane rim.

The front has no parameters and no buffers: a model's state_dict (and so a bundle) is
unchanged by it.  It is invariant to a per-case, per-sequence affine intensity change
a * x + b with a > 0 when normalize='roi_median' (exactly, up to float rounding; up to the
median's 1e-3 floor).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distmsfa.config import ConfigError
from distmsfa.models.base import SEQUENCE_INDEX

NORMALIZE = ("none", "roi_median")


def check_front(normalize: str, morph: int, erode: int, where: str = "InputFront") -> None:
    """Raise ConfigError (saying how to fix it) for an invalid front setting."""
    if normalize not in NORMALIZE:
        raise ConfigError(f"{where}: normalize must be one of {NORMALIZE} (roi_median: divide each sequence by its "
                          f"ROI median), got {normalize!r}")
    if not (isinstance(morph, int) and not isinstance(morph, bool) and (morph == 0 or (morph >= 3 and morph % 2 == 1))):
        raise ConfigError(f"{where}: morph must be 0 (off) or an odd in-plane window >= 3 (e.g. 3), got {morph!r}")
    if not (isinstance(erode, int) and not isinstance(erode, bool) and erode >= 0):
        raise ConfigError(f"{where}: erode must be an int >= 0 (voxels of in-plane ROI rim to drop), got {erode!r}")


def roi_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) background-subtracted -> (B, 1, D, H, W) bool: voxels where any channel
    is above the background (all voxels if none is)."""
    m = (x > 0).any(1, keepdim=True)
    empty = ~m.flatten(1).any(1)
    return m | empty.view(-1, 1, 1, 1, 1)


def _inplane(t: torch.Tensor, k: int, op: str) -> torch.Tensor:
    """Grey dilation ('max') or erosion ('min') over a 1 x k x k window (edge-padded by -inf/+inf)."""
    w, p = (1, k, k), (0, k // 2, k // 2)
    return F.max_pool3d(t, w, 1, p) if op == "max" else -F.max_pool3d(-t, w, 1, p)


class InputFront(nn.Module):
    """x (B, C, D, H, W) -> (v (B, S, D, H, W) float32, mask (B, 1, D, H, W) bool); module doc."""

    def __init__(self, sequences=("t1", "fs"), normalize: str = "none", morph: int = 0, erode: int = 0) -> None:
        super().__init__()
        check_front(normalize, morph, erode)
        unknown = [s for s in sequences if s not in SEQUENCE_INDEX]
        if not sequences or unknown:
            raise ConfigError(f"InputFront: sequences must be a non-empty subset of {tuple(SEQUENCE_INDEX)}, got {sequences!r}")
        self.sequences = tuple(sequences)
        self.normalize, self.morph, self.erode = normalize, morph, erode

    def extra_repr(self) -> str:
        return f"sequences={self.sequences}, normalize={self.normalize!r}, morph={self.morph}, erode={self.erode}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.cat([x[:, SEQUENCE_INDEX[s] : SEQUENCE_INDEX[s] + 1] for s in self.sequences], 1).float()
        # Background = each case's and sequence's minimum (0 on a masked crop, but the
        # training augmentation's intensity shift lifts it): subtracting it keeps the mask
        # and the median ratio the same in training and evaluation.
        v = v - v.flatten(2).amin(-1).view(*v.shape[:2], 1, 1, 1)
        mask = roi_mask(v)
        if self.erode:
            # The geometry augmentation's bilinear warp blends the ROI's rim with the zero
            # background: rim voxels look dark on both sequences and would be "lesions".
            eroded = _inplane(mask.float(), 2 * self.erode + 1, "min") > 0.5
            mask = eroded | ~eroded.flatten(1).any(1).view(-1, 1, 1, 1, 1)  # an all-rim ROI keeps its voxels
        if self.normalize == "roi_median":
            flat = v.flatten(2).masked_fill(~mask.flatten(2), float("nan"))
            med = flat.nanmedian(-1).values.clamp_min(1e-3)
            v = v / med.view(*med.shape, 1, 1, 1)
        if self.morph:
            chans = []
            for i, s in enumerate(self.sequences):
                t = v[:, i : i + 1]
                if s == "t1":  # closing: fills dark lines/spots thinner than the window
                    chans.append(_inplane(_inplane(t, self.morph, "max"), self.morph, "min"))
                else:  # opening: removes bright lines/spots thinner than the window
                    chans.append(_inplane(_inplane(t, self.morph, "min"), self.morph, "max"))
            v = torch.cat(chans, 1)
        return v * mask, mask

"""Batch augmentation on the device: one random affine per case applied to both sequences.

The parameters are drawn on the CPU from a ``torch.Generator`` seeded from
``(seed, epoch, step)``, so a batch is augmented identically whatever transport delivered
it (plain loop or Ray Data) and whatever device runs the model; the warp itself
(``affine_grid`` + ``grid_sample``) runs on the batch's device.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from distmsfa.training.config import AugmentConfig


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """A 63-bit seed for one batch, stable across processes and Python versions."""
    h = hashlib.blake2b(f"aug:{seed}:{epoch}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _rand(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


#: A warped inside-mask indicator at least this is "fully inside": bilinear weights of a
#: footprint wholly in the mask sum to 1 up to float32 rounding (~1e-7).
FULLY_INSIDE = 1.0 - 1e-5


def inside_mask(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, D, H, W)`` float 1/0: voxels of a masked crop ``x`` ``(B, 2, D, H, W)`` that are
    inside the ROI neighbourhood, read from the data (outside is exactly 0 in both sequences;
    a tissue voxel at exactly 0 in T1 *and* FS reads as outside, which costs at most its
    interpolation neighbours)."""
    return (x != 0).any(dim=1, keepdim=True).to(torch.float32)


def resolve_masked(cfg: AugmentConfig, roi_mask_mm: float | None) -> AugmentConfig:
    """``cfg`` with ``masked='auto'`` resolved from the dataset's ``roi_mask_mm`` (its
    fingerprint's preprocessing parameters): ``on`` for a masked dataset, ``off`` otherwise.
    An explicit ``on``/``off`` is kept."""
    if cfg.masked != "auto":
        return cfg
    return cfg.replace(masked="on" if roi_mask_mm is not None else "off")


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, seed: int, epoch: int, step: int) -> torch.Tensor:
    """Augment ``x`` ``(B, 2, D, H, W)`` (channels T1, FS) in [0, 1]; returns a new tensor of
    the same shape, dtype and device.

    Geometry (shared by T1 and FS): left-right flip (W), in-plane rotation about the D
    axis, isotropic zoom, in-plane translation (``translate``); border padding is zero (background).  Intensity: per case and
    per sequence ``x * (1 + a) + b``, clipped back to [0, 1].

    ``cfg.masked == 'on'`` (a crop masked to the ROI, outside exactly 0 in both sequences):
    the inside indicator (:func:`inside_mask`) is warped with the same grid, every output
    voxel whose warped indicator is below :data:`FULLY_INSIDE` is set to exactly 0 (no
    tissue/background blends at the rim), and the intensity jitter applies inside only (the
    background stays exactly 0).  ``off``/``auto``: the plain augmentation above.  Both draw
    the same random numbers from the ``(seed, epoch, step)`` generator, so the geometry of a
    batch is the same either way and deterministic per ``(seed, epoch, step)``."""
    if not cfg.enabled:
        return x
    if x.dim() != 5 or x.shape[1] != 2:
        raise ValueError(f"augment_batch expects (B, 2, D, H, W), got {tuple(x.shape)}")
    b = x.shape[0]
    gen = torch.Generator().manual_seed(batch_seed(seed, epoch, step))
    flip = torch.rand(b, generator=gen, dtype=torch.float64) < cfg.flip_prob
    angle = _rand(gen, b, -cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    zoom = _rand(gen, b, 1.0 - cfg.scale, 1.0 + cfg.scale)
    gain = _rand(gen, 2 * b, -cfg.intensity_scale, cfg.intensity_scale).view(b, 2)
    shift = _rand(gen, 2 * b, -cfg.intensity_shift, cfg.intensity_shift).view(b, 2)
    # Drawn last and only when used, so every other draw is the same as without translation.
    move = (_rand(gen, 2 * b, -2 * cfg.translate, 2 * cfg.translate).view(b, 2) if cfg.translate > 0
            else torch.zeros(b, 2, dtype=torch.float64))  # normalised coords span 2: fraction x 2

    # affine_grid's theta maps output coords (x=W, y=H, z=D; normalised) to input coords.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sx = torch.where(flip, -1.0, 1.0).double()
    theta = torch.zeros(b, 3, 4, dtype=torch.float64)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos
    theta[:, 2, 2] = 1.0  # no zoom/rotation across the thick-slice axis D
    theta[:, 0, 3] = move[:, 0]  # W
    theta[:, 1, 3] = move[:, 1]  # H
    needs_warp = bool(cfg.rotate_deg > 0 or cfg.scale > 0 or cfg.translate > 0 or flip.any())
    masked = cfg.masked == "on"
    out = x
    keep = inside_mask(x) if masked else None
    if needs_warp:
        work = x.float()
        if masked:  # one resampling for the image and its indicator: the same grid, independent channels
            work = torch.cat([work, keep], dim=1)
        # non_blocking: a small pageable host->GPU copy that need not make the host wait
        grid = F.affine_grid(theta.to(device=x.device, dtype=work.dtype, non_blocking=True), list(work.shape),
                             align_corners=False)
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if masked:
            out, keep = out[:, :2], out[:, 2:]
    out = out.float() * (1.0 + gain.to(out.device, torch.float32, non_blocking=True).view(b, 2, 1, 1, 1))
    out = out + shift.to(out.device, torch.float32, non_blocking=True).view(b, 2, 1, 1, 1)
    out = out.clamp_(0.0, 1.0)
    if masked:  # outside, and the rim whose footprint reaches outside: exactly 0 whatever the jitter
        out = out * (keep >= FULLY_INSIDE).to(out.dtype)
    return out.to(x.dtype)

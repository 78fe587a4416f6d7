"""Mask-aware augmentation (``AugmentConfig.masked``): a crop masked to the ROI stays a clean
masked crop (no tissue/background blends at the rim, background exactly 0 under the
intensity jitter); unmasked crops are augmented exactly as before; the CV runner turns it
on from the dataset's fingerprint."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from distmsfa.config import ConfigError
from distmsfa.training.augment import _rand, augment_batch, batch_seed, inside_mask, resolve_masked
from distmsfa.training.config import AugmentConfig

# The demo profile's augmentation (tune_configs/demo.yaml), flips always on so every case warps.
DEMO = dict(flip_prob=0.5, translate=0.1, rotate_deg=15.0, scale=0.15, intensity_scale=0.2, intensity_shift=0.1)
LO = 0.5  # the smallest value inside the synthetic masks


def _old_augment_batch(x, cfg, seed, epoch, step):
    """augment_batch as it was before ``masked`` existed (commit bbb0708), kept verbatim."""
    if not cfg.enabled:
        return x
    b = x.shape[0]
    gen = torch.Generator().manual_seed(batch_seed(seed, epoch, step))
    flip = torch.rand(b, generator=gen, dtype=torch.float64) < cfg.flip_prob
    angle = _rand(gen, b, -cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    zoom = _rand(gen, b, 1.0 - cfg.scale, 1.0 + cfg.scale)
    gain = _rand(gen, 2 * b, -cfg.intensity_scale, cfg.intensity_scale).view(b, 2)
    shift = _rand(gen, 2 * b, -cfg.intensity_shift, cfg.intensity_shift).view(b, 2)
    move = (_rand(gen, 2 * b, -2 * cfg.translate, 2 * cfg.translate).view(b, 2) if cfg.translate > 0
            else torch.zeros(b, 2, dtype=torch.float64))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sx = torch.where(flip, -1.0, 1.0).double()
    theta = torch.zeros(b, 3, 4, dtype=torch.float64)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos
    theta[:, 2, 2] = 1.0
    theta[:, 0, 3] = move[:, 0]
    theta[:, 1, 3] = move[:, 1]
    needs_warp = bool(cfg.rotate_deg > 0 or cfg.scale > 0 or cfg.translate > 0 or flip.any())
    out = x
    if needs_warp:
        work = x.float()
        grid = F.affine_grid(theta.to(device=x.device, dtype=work.dtype), list(work.shape), align_corners=False)
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.float() * (1.0 + gain.to(out.device, torch.float32).view(b, 2, 1, 1, 1))
    out = out + shift.to(out.device, torch.float32).view(b, 2, 1, 1, 1)
    return out.clamp_(0.0, 1.0).to(x.dtype)


def _masked_batch(b: int = 6, shape=(8, 48, 64), seed: int = 0) -> torch.Tensor:
    """Cases masked to a disc-like region (varied per case), tissue values in [LO, 1] inside, 0 outside."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = shape
    hh, ww = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x = torch.zeros(b, 2, d, h, w)
    for i in range(b):
        ch, cw = h / 2 + (i - b / 2), w / 2 - (i - b / 2)
        r = 8 + 2 * i
        inside = ((hh - ch) ** 2 + (ww - cw) ** 2) <= r * r
        vals = LO + (1 - LO) * torch.rand(2, d, h, w, generator=g)
        x[i] = vals * inside
    return x


def test_masked_crop_has_no_rim_blend_and_zero_outside():
    x = _masked_batch()
    cfg = AugmentConfig(**{**DEMO, "intensity_scale": 0.0, "intensity_shift": 0.0}, masked="on")
    for step in range(4):
        out = augment_batch(x, cfg, seed=0, epoch=1, step=step)
        nz = out[out != 0]
        # a rim blend of tissue and zero background lies strictly between 0 and the smallest tissue value
        assert nz.numel() > 0 and float(nz.min()) >= LO * (1 - 1e-4)
        # T1 and FS share the support (a voxel is in or out for both sequences)
        assert torch.equal(out[:, 0] != 0, out[:, 1] != 0)
    # the plain augmentation does blend the rim (the bug this switch removes): the test can fail
    plain = augment_batch(x, cfg.replace(masked="off"), seed=0, epoch=1, step=0)
    assert ((plain > 0) & (plain < 0.9 * LO)).sum() > 50


def test_masked_output_is_the_plain_warp_inside_the_warped_mask():
    """Inside the fully-inside region the values are the plain augmentation's; outside exactly 0."""
    x = _masked_batch(b=4, seed=3)
    cfg = AugmentConfig(**DEMO, masked="on")
    on = augment_batch(x, cfg, seed=5, epoch=2, step=7)
    off = augment_batch(x, cfg.replace(masked="off"), seed=5, epoch=2, step=7)
    # the warped indicator, built independently of augment_batch from the plain warp of 1/0 data
    ones = (x != 0).any(1, keepdim=True).float().expand(-1, 2, -1, -1, -1)
    warped = _old_augment_batch(ones, cfg.replace(intensity_scale=0.0, intensity_shift=0.0), 5, 2, 7)
    full = warped >= 1 - 1e-5
    assert full.any() and (~full).any()
    assert torch.equal(on[~full], torch.zeros_like(on[~full]))
    torch.testing.assert_close(on[full], off[full], rtol=0, atol=1e-6)


def test_background_stays_zero_under_intensity_shift():
    x = _masked_batch()
    cfg = AugmentConfig(flip_prob=0.0, rotate_deg=0.0, scale=0.0, translate=0.0, intensity_scale=0.2,
                        intensity_shift=0.1, masked="on")
    out = augment_batch(x, cfg, seed=1, epoch=0, step=0)
    outside = x == 0
    assert torch.count_nonzero(out[outside]) == 0
    # no geometry: the inside keeps its support and is jittered (not left as it was)
    assert torch.equal(out != 0, x != 0)  # tissue >= 0.5 * 0.8 - 0.1 > 0: nothing clamps to 0
    assert not torch.equal(out[~outside], x[~outside])
    # the plain jitter lifts the background in some case/sequence (a positive shift): the check can fail
    plain = augment_batch(x, cfg.replace(masked="off"), seed=1, epoch=0, step=0)
    assert torch.count_nonzero(plain[outside]) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("masked", ["off", "auto"])
def test_unmasked_path_is_bit_identical_to_the_old_function(masked, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 32, 40, generator=g).to(dtype)
    x[0, :, :, :5] = 0  # exact zeros (a masked-looking corner) must not change the plain path
    for cfg in (AugmentConfig(**DEMO, masked=masked), AugmentConfig(masked=masked)):
        for step in range(3):
            new = augment_batch(x, cfg, seed=2, epoch=3, step=step)
            old = _old_augment_batch(x, cfg, 2, 3, step)
            assert new.dtype == x.dtype and torch.equal(new, old)


def test_masked_path_is_deterministic_per_seed_epoch_step():
    x = _masked_batch(b=4)
    cfg = AugmentConfig(**DEMO, masked="on")
    a = augment_batch(x, cfg, seed=0, epoch=4, step=2)
    assert torch.equal(a, augment_batch(x.clone(), cfg, seed=0, epoch=4, step=2))
    assert not torch.equal(a, augment_batch(x, cfg, seed=0, epoch=4, step=3))
    assert not torch.equal(a, augment_batch(x, cfg, seed=1, epoch=4, step=2))


def test_inside_mask_reads_either_sequence():
    x = torch.zeros(1, 2, 1, 2, 2)
    x[0, 0, 0, 0, 0] = 0.3  # T1 only
    x[0, 1, 0, 1, 1] = 0.2  # FS only
    assert inside_mask(x).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_config_modes_and_resolution():
    assert AugmentConfig().masked == "auto"
    assert AugmentConfig.from_dict({"masked": True}).masked == "on"  # YAML's bare `on`
    assert AugmentConfig.from_dict({"masked": False}).masked == "off"
    with pytest.raises(ConfigError, match="masked"):
        AugmentConfig(masked="yes")
    assert resolve_masked(AugmentConfig(), 7.5).masked == "on"
    assert resolve_masked(AugmentConfig(), None).masked == "off"
    assert resolve_masked(AugmentConfig(masked="off"), 7.5).masked == "off"  # explicit choice kept
    assert resolve_masked(AugmentConfig(masked="on"), None).masked == "on"


@pytest.mark.slow
@pytest.mark.parametrize("roi_mask_mm", [7.5, None])
def test_cv_run_resolves_masked_from_the_dataset_fingerprint(tmp_path, roi_mask_mm):
    """A run on a masked dataset gets the mask-aware path with no user setting, and records it."""
    from distmsfa.training import run_cv
    from tests.training._tiny import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "data", n=8, folds=2, n_external=0)
    params = {"crop_size": [8, 32, 32]} | ({"roi_mask_mm": roi_mask_mm} if roi_mask_mm is not None else {})
    (data / "fingerprint.json").write_text(json.dumps({"fingerprint": "tiny", "params": params}))
    res = run_cv(data, "baseline", profile="cpu", out=tmp_path / "run", plain=True, progress=False, folds=[0],
                 overrides={"train": {"epochs": 1, "num_threads": 1, "batch_size": 4}})
    want = "on" if roi_mask_mm is not None else "off"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train"]["augment"]["masked"] == want
    assert res.summary["augment_masked"] == want

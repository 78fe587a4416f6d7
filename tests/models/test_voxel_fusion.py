"""The voxel-fusion probe net (issue 15): what each variant can and cannot see.

The registry tests (test_models_registry.py) check its contract; these check the properties
the probes rely on: early fusion sees where T1 and FS agree, late fusion does not, a
single-sequence control reads one sequence only, and the training augmentation's intensity
affine (which lifts the masked crop's zero background) does not change what the net sees.
"""
from __future__ import annotations

import pytest
import torch

from distmsfa.config import ConfigError
from distmsfa.models import create_model

SHAPE = (2, 2, 4, 16, 16)


def masked_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A masked crop: a box ROI with values in [0.1, 0.9], zero outside; and the ROI mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(SHAPE)
    mask = torch.zeros(SHAPE[2:], dtype=torch.bool)
    mask[1:3, 4:12, 3:13] = True
    x[:, :, mask] = 0.1 + 0.8 * torch.rand(SHAPE[0], 2, int(mask.sum()), generator=g)
    return x, mask


def net(**cfg):
    torch.manual_seed(0)
    return create_model("voxel_fusion", preset="tiny", **cfg).eval()


def test_late_fusion_is_blind_to_co_location_and_early_fusion_is_not():
    x, mask = masked_batch()
    # Shuffle the FS voxels inside the ROI: each sequence's values are the same, only which
    # T1 voxel meets which FS voxel changes.
    y = x.clone()
    fs = y[:, 1, mask]
    y[:, 1, mask] = fs[:, torch.randperm(fs.shape[1], generator=torch.Generator().manual_seed(1))]
    # erode=0: the shuffle also moves values between the ROI's rim and its interior.
    late, early = net(fusion="late", erode=0), net(fusion="early", erode=0)
    torch.testing.assert_close(late(x)["fuse"], late(y)["fuse"])
    assert not torch.allclose(early(x)["fuse"], early(y)["fuse"], atol=1e-4)


@pytest.mark.parametrize("seq,other", [("t1", 1), ("fs", 0)])
def test_single_sequence_control_reads_one_sequence(seq, other):
    x, mask = masked_batch()
    m = net(sequences=(seq,))
    y = x.clone()
    y[:, other, mask] = torch.rand_like(y[:, other, mask])
    torch.testing.assert_close(m(x)["fuse"], m(y)["fuse"])
    z = x.clone()
    z[:, 1 - other, mask] = torch.rand_like(z[:, 1 - other, mask])
    assert not torch.allclose(m(x)["fuse"], m(z)["fuse"], atol=1e-4)


@pytest.mark.parametrize("cfg", [{}, {"fusion": "late"}, {"pool": "topk"}, {"morph": 3}])
def test_invariant_to_the_augmentations_intensity_affine(cfg):
    # augment_batch: x * (1 + a) + b per case and sequence, clipped to [0, 1].  On a masked
    # crop the background becomes b: without the background subtraction the net would pool
    # over the whole crop in training and over the ROI in evaluation.
    x, _ = masked_batch()
    a = torch.tensor([[0.15, -0.1], [-0.2, 0.05]]).view(2, 2, 1, 1, 1)
    b = torch.tensor([[0.08, 0.03], [0.05, 0.1]]).view(2, 2, 1, 1, 1)
    m = net(**cfg)
    torch.testing.assert_close(m(x)["fuse"], m(x * (1 + a) + b)["fuse"], rtol=1e-4, atol=1e-4)


def test_background_outside_the_roi_is_not_pooled():
    x, mask = masked_batch()
    m = net(normalize="none")
    ref = m(x)["fuse"]
    # Moving the ROI's content inside the crop (background unchanged) keeps mean/max pooling.
    y = torch.zeros_like(x)
    y[..., 1:] = x[..., :-1]
    torch.testing.assert_close(m(y)["fuse"], ref)


def test_the_rim_of_the_roi_is_not_pooled():
    # The rim is where the augmentation's bilinear warp blends tissue with background.
    x, mask = masked_batch()
    m = net()
    rim = mask.clone()
    rim[1:3, 5:11, 4:12] = False
    y = x.clone()
    y[:, :, rim] = 0.05 + 0.9 * torch.rand(SHAPE[0], 2, int(rim.sum()))
    torch.testing.assert_close(m(x)["fuse"], m(y)["fuse"])
    assert not torch.allclose(net(erode=0)(x)["fuse"], net(erode=0)(y)["fuse"], atol=1e-4)


def test_bad_config_says_how_to_fix():
    with pytest.raises(ConfigError, match="fusion must be"):
        create_model("voxel_fusion", fusion="mid")
    with pytest.raises(ConfigError, match="morph must be"):
        create_model("voxel_fusion", morph=4)
    with pytest.raises(ConfigError, match="pool must be"):
        create_model("voxel_fusion", pool="avg")
    with pytest.raises(ConfigError, match="erode must be"):
        create_model("voxel_fusion", erode=-1)
    with pytest.raises(ConfigError, match="loss must be"):
        create_model("voxel_fusion", loss="hybrid")


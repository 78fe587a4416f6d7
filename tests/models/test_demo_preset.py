"""The ``demo`` preset: every registered model accepts it, MSFANet and its Baselines share it,
and MSFANet's sequences meet at a token grid fine enough for the demo crop's lesions."""
from __future__ import annotations

import pytest
import torch

from distmsfa.models import registry
from distmsfa.models.fusion_nets import PRESETS as FUSION_PRESETS
from distmsfa.models.msfanet import PRESETS

DEMO_CROP = (8, 48, 64)


@pytest.mark.parametrize("name", registry.list_models())
def test_every_model_builds_with_the_demo_preset(name):
    model = registry.create_model(name, preset="demo")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", ["msfanet", "baseline", "baseline_t1", "baseline_fs", "msfanet_bce", "baseline_hybrid"])
def test_msfanet_family_shares_the_demo_stages(name):
    cfg = registry.create_model(name, preset="demo").cfg
    assert (cfg.widths, cfg.strides) == (PRESETS["demo"]["widths"], PRESETS["demo"]["strides"])
    assert (FUSION_PRESETS["demo"]["widths"], FUSION_PRESETS["demo"]["strides"]) == (cfg.widths, cfg.strides)


def test_demo_msfanet_attends_over_10mm_tokens_at_the_demo_crop():
    from distmsfa.demo import DEMO_CROP as crop, DEMO_SPACING_MM

    assert crop == DEMO_CROP
    model = registry.create_model("msfanet", preset="demo").eval()
    seen = {}

    def hook(module, inputs, output):
        seen["z1"] = tuple(inputs[0].shape)

    model.msfa["t1"].register_forward_hook(hook)
    with torch.no_grad():
        out = model(torch.rand(2, 2, *crop))
    assert set(out) == {"fuse", "t1", "fs"} and all(v.shape == (2,) for v in out.values())
    d, h, w = seen["z1"][2:]
    token_mm = [s * c / n for s, c, n in zip(DEMO_SPACING_MM, crop, (d, h, w))]
    # tiny/default strides put tokens 10 x 20 x 20 mm apart (a 7-20 mm lesion ~ one token)
    assert token_mm == [10.0, 10.0, 10.0], token_mm


@pytest.mark.parametrize("pool, expected", [("avg", 1 / 64), ("max", 1.0), ("avgmax", 1 + 1 / 64)])
def test_head_pooling_keeps_or_dilutes_a_one_voxel_finding(pool, expected):
    from distmsfa.models.blocks import Head

    head = Head(1, pool=pool)
    with torch.no_grad():
        head.fc.weight.fill_(1.0)
        head.fc.bias.zero_()
        x = torch.zeros(1, 1, 4, 4, 4)
        x[0, 0, 1, 2, 3] = 1.0
        assert float(head(x)) == pytest.approx(expected)


def test_msfanet_head_pool_is_checked():
    from distmsfa.config import ConfigError

    with pytest.raises(ConfigError, match="head_pool"):
        registry.create_model("msfanet", preset="demo", head_pool="min")
    assert registry.create_model("baseline_t1", preset="demo", head_pool="max").heads["fuse"].pool == "max"

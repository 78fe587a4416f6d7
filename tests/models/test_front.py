"""The input front (models/front.py) and MSFANet's ``input_norm`` / ``morph`` / ``input_erode``."""
from __future__ import annotations

import pytest
import torch

from distmsfa.config import ConfigError
from distmsfa.models import create_model
from distmsfa.models.front import InputFront

NETS = ("msfanet", "baseline", "baseline_t1", "baseline_fs")
SHAPE = (8, 32, 32)


def masked_input(b: int = 2, seed: int = 0) -> torch.Tensor:
    """(b, 2, 8, 32, 32): tissue in [0.2, 1] inside a box, background exactly 0 outside it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, 2, *SHAPE)
    x[:, :, 1:7, 6:26, 5:27] = 0.2 + 0.8 * torch.rand(b, 2, 6, 20, 22, generator=g)
    return x


def shallow_input(model, x: torch.Tensor) -> torch.Tensor:
    """What the shared shallow module receives for input x (a forward hook)."""
    seen = []
    h = model.shallow.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen[0]


@pytest.mark.parametrize("name", NETS)
def test_default_off_is_todays_network(name):
    torch.manual_seed(0)
    default = create_model(name, preset="tiny").eval()
    explicit = create_model(name, preset="tiny", input_norm="none", morph=0, input_erode=0).eval()
    on = create_model(name, preset="tiny", input_norm="roi_median", morph=3, input_erode=1).eval()
    assert default.front is None
    # Same parameters and buffers with the front off or on (it is parameter-free): one
    # state_dict loads into all three, so a bundle stays plain weights.
    assert list(default.state_dict()) == list(explicit.state_dict()) == list(on.state_dict())
    explicit.load_state_dict(default.state_dict())
    on.load_state_dict(default.state_dict())
    x = masked_input()
    x = x + 0.05  # a shifted background (the augmentation's): the front would remove it
    # Off: the shallow module sees the raw sequences stacked along the batch, as before.
    raw = torch.cat([x[:, i : i + 1] for i in ([0, 1] if name in ("msfanet", "baseline") else
                                                  [0] if name == "baseline_t1" else [1])], 0)
    assert torch.equal(shallow_input(default, x), raw)
    with torch.no_grad():
        a, b, c = default(x), explicit(x), on(x)
    assert set(a) == set(b) == set(c)
    for k in a:
        assert torch.equal(a[k], b[k])
        assert not torch.allclose(a[k], c[k], atol=1e-4)  # the front changes what the net sees


@pytest.mark.parametrize("name", NETS)
def test_roi_median_output_invariant_to_per_case_per_sequence_scale(name):
    torch.manual_seed(0)
    net = create_model(name, preset="tiny", input_norm="roi_median", head_pool="max").eval()
    with torch.no_grad():  # an untrained net's logits barely move: amplify them so "not invariant" shows
        for head in net.heads.values():
            head.fc.weight.mul_(100.0)
    plain = create_model(name, preset="tiny", head_pool="max").eval()
    plain.load_state_dict(net.state_dict())
    x = masked_input()
    scale = torch.tensor([[0.5, 3.0], [2.0, 0.25]]).view(2, 2, 1, 1, 1)
    shift = torch.tensor([[0.0, 0.1], [0.3, 0.0]]).view(2, 2, 1, 1, 1)  # the background becomes a constant
    y = x * scale + shift
    with torch.no_grad():
        out, out_scaled = net(x), net(y)
        ref, ref_scaled = plain(x), plain(y)
    for k in out:
        torch.testing.assert_close(out[k], out_scaled[k], atol=1e-3, rtol=1e-4)
        assert (ref[k] - ref_scaled[k]).abs().max() > 0.05  # without the front it is not


def test_roi_median_units_are_ratios_to_the_roi_median():
    x = masked_input(1)
    v, mask = InputFront(("t1", "fs"), "roi_median")(x * 7.0)
    inside = v[mask.expand_as(v)].view(2, -1)
    torch.testing.assert_close(inside.median(-1).values, torch.ones(2), atol=1e-2, rtol=0)
    assert mask.sum() == 6 * 20 * 22


def test_unmasked_crop_is_a_per_case_scale_normalization():
    # No background: the mask is the whole crop (but the one minimum voxel per sequence);
    # dividing by the crop's median still removes a per-case scale.
    g = torch.Generator().manual_seed(1)
    x = 0.1 + torch.rand(2, 2, *SHAPE, generator=g)
    front = InputFront(("t1", "fs"), "roi_median")
    v, mask = front(x)
    assert mask.float().mean() > 0.99
    torch.testing.assert_close(front(x * 4.0)[0], v, atol=1e-5, rtol=1e-5)


def _line_and_blob(value_tissue: float, value_feature: float) -> torch.Tensor:
    x = torch.zeros(1, 1, *SHAPE)
    x[:, :, 1:7, 2:30, 2:30] = value_tissue
    x[:, :, 1:7, 16, 4:28] = value_feature  # a one-voxel-wide line along W
    x[:, :, 1:7, 5:10, 5:10] = value_feature  # a 5x5 in-plane blob
    return x


@pytest.mark.parametrize("seq", ["t1", "fs"])
def test_morph3_removes_a_thin_line_but_keeps_a_blob(seq):
    # FS: a bright line (cleft) is opened away; T1: a dark line (cortex) is closed.
    tissue, feature = (1.0, 4.0) if seq == "fs" else (1.0, 0.3)
    one = _line_and_blob(tissue, feature)
    if seq == "fs":
        one[:, :, 3, 18:28, 18:28] = feature  # a one-slice plate: in-plane it is wide, so it stays
    x = torch.cat([one, torch.zeros_like(one)] if seq == "t1" else [torch.zeros_like(one), one], 1)
    v = InputFront((seq,), "none", morph=3)(x)[0][0, 0]
    plain = InputFront((seq,), "none")(x)[0][0, 0]
    assert torch.allclose(plain[3, 16, 10], torch.tensor(feature))  # without morph the line is there
    assert torch.allclose(v[3, 16, 4:28], torch.full((24,), tissue))  # gone
    assert torch.allclose(v[3, 5:10, 5:10], torch.full((5, 5), feature))  # the blob stays
    if seq == "fs":  # the window is in-plane (1 x 3 x 3): a 3D opening would remove the plate
        assert torch.allclose(v[3, 18:28, 18:28], torch.full((10, 10), feature))
    else:
        assert torch.allclose(v[3, 20:25, 20:25], torch.full((5, 5), tissue))


def test_background_stays_zero_after_the_front():
    x = masked_input()
    x = x * 2.0 + 0.3  # the augmentation's affine change lifts the background to 0.3
    for norm, morph, erode in [("roi_median", 0, 0), ("roi_median", 3, 0), ("none", 3, 1), ("roi_median", 5, 1)]:
        v, mask = InputFront(("t1", "fs"), norm, morph, erode)(x)
        outside = ~mask.expand_as(v)
        assert outside.any() and torch.count_nonzero(v[outside]) == 0
        assert (v[~outside] > 0).float().mean() > 0.99
    _, eroded = InputFront(("t1", "fs"), "none", 0, 1)(x)
    assert eroded[0].sum() == 6 * 18 * 20  # one voxel of in-plane rim gone, not along D


def test_msfanet_feeds_the_front_output_to_the_shallow_module():
    torch.manual_seed(0)
    net = create_model("msfanet", preset="tiny", input_norm="roi_median", morph=3).eval()
    x = masked_input()
    v, _ = InputFront(("t1", "fs"), "roi_median", 3)(x)
    assert torch.equal(shallow_input(net, x), torch.cat([v[:, :1], v[:, 1:]], 0))


@pytest.mark.parametrize("bad, match", [
    ({"input_norm": "zscore"}, "input_norm must be one of"),
    ({"morph": 2}, "odd in-plane window >= 3"),
    ({"morph": 1}, "odd in-plane window >= 3"),
    ({"morph": True}, "odd in-plane window >= 3"),
    ({"input_erode": -1}, "input_erode must be an int >= 0"),
])
def test_config_errors_say_how_to_fix(bad, match):
    with pytest.raises(ConfigError, match=match):
        create_model("msfanet", preset="tiny", **bad)
    with pytest.raises(ConfigError):
        InputFront(("t1", "fs"), bad.get("input_norm", "none"), bad.get("morph", 0), bad.get("input_erode", 0))


@pytest.mark.parametrize("name", ["msfanet", "baseline_fs"])
def test_search_space_accepts_the_front_options(name):
    from distmsfa.hpo.space import apply_point, parse_space

    space = parse_space({"model.input_norm": {"choice": ["none", "roi_median"]}, "model.morph": {"choice": [0, 3, 5]},
                         "model.input_erode": {"choice": [0, 1]}}, name)
    assert space["model.morph"].choices == (0, 3, 5)
    with pytest.raises(ConfigError, match="input_norm"):
        parse_space({"model.input_norm": {"choice": [1]}}, name)  # not a str
    train = apply_point({"train": {"model": name}}, {"model.input_norm": "roi_median", "model.morph": 3})["train"]
    net = create_model(name, preset="tiny", **train["model_cfg"])
    assert (net.cfg.input_norm, net.cfg.morph) == ("roi_median", 3)


@pytest.mark.parametrize("name", ["msfanet", "baseline_t1"])
def test_gradcam_with_the_front_on(name):
    from distmsfa.models import gradcam

    torch.manual_seed(0)
    net = create_model(name, preset="tiny", input_norm="roi_median", morph=3, input_erode=1)
    x = masked_input(1)[0]
    maps = gradcam(net, x)
    assert set(maps) and all(m.shape == SHAPE and torch.isfinite(torch.as_tensor(m)).all() for m in maps.values())
    fuse = torch.as_tensor(maps["fuse"])
    assert fuse.abs().sum() > 0


def test_front_under_bf16_autocast():
    torch.manual_seed(0)
    net = create_model("msfanet", preset="tiny", input_norm="roi_median", morph=3)
    x = masked_input()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    loss, _ = net.loss(out, torch.tensor([0.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in out.values())

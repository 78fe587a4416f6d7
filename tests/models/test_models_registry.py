"""Every registered model keeps the contract of distmsfa/models/base.py (tiny presets, CPU)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distmsfa.config import ConfigError
from distmsfa.models import create_model, list_models
from distmsfa.models.gradcam import gradcam

MODELS = list_models()
SHAPE = (2, 2, 8, 32, 48)  # (B, 2, D, H, W); divisible by every default total stride


def tiny(name: str, **over):
    # alpha starts at 0 (MSFA = identity), which zeroes the attention projections' first
    # gradient by design; a non-zero alpha lets the gradient test see them too.
    if name.startswith("msfanet"):
        over.setdefault("alpha_init", 0.1)
    return create_model(name, preset="tiny", **over)


def batch(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + SHAPE[1:], generator=g)
    y = torch.tensor([float(i % 2) for i in range(n)])
    return x, y


def test_registry_lists_paper_rows():
    expected = {"msfanet", "msfanet_bce", "baseline", "baseline_hybrid", "baseline_t1", "baseline_fs",
                "embeddingnet", "centralnet", "triplenet", "multistream", "mtln", "bressem",
                "shufflenet_dual", "efficientnet_dual"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_loss_and_gradients(name):
    torch.manual_seed(0)
    m = tiny(name)
    x, y = batch()
    out = m(x)
    assert set(out) == set(m.head_names) and m.primary_head in out
    for v in out.values():
        assert v.shape == (2,) and torch.isfinite(v).all()
    loss, logs = m.loss(out, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    # logs: detached 0-d tensors (read once per epoch by the loop, never per step)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad and math.isfinite(float(v)) for v in logs.values())
    assert {f"w_{h}" for h in m.head_names} <= set(logs)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    zero = [n for n, p in m.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient at {zero}"
    p = m.predict_proba(out)
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("name", MODELS)
def test_overfits_tiny_batch(name):
    torch.manual_seed(0)
    m = tiny(name)
    x, y = batch(4, seed=1)
    opt = torch.optim.Adam(m.param_groups(0.0), lr=3e-3)
    first = None
    for _ in range(30):
        loss, logs = m.loss(m(x), y)
        first = logs["loss_fuse"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss_fuse"] < 0.5 * first, f"fuse BCE {first:.3f} -> {logs['loss_fuse']:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_eval_forward_deterministic_and_gradcam(name):
    torch.manual_seed(0)
    m = tiny(name).eval()
    x, _ = batch()
    a, b = m(x), m(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    maps = gradcam(m, x[0])
    # One map per declared layer; a layer shared by both sequences gives one per sequence.
    layers = set(m.gradcam_layers())
    expected = (layers - {"shared"}) | (set(m.sequences) if "shared" in layers else set())
    assert expected and set(maps) == expected, (sorted(maps), sorted(expected))
    if name.startswith("msfanet"):  # paper sec. 1.5: T1, FS and Fuse branch maps
        assert set(maps) == {"t1", "fs", "fuse"}
    for arr in maps.values():
        assert isinstance(arr, np.ndarray) and arr.shape == SHAPE[2:]
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
    assert all(not mod._forward_hooks for mod in m.modules()), "Grad-CAM left hooks behind"


@pytest.mark.parametrize("name", ["msfanet", "baseline_hybrid", "centralnet", "bressem"])
def test_channels_last_matches_default_layout(name):
    torch.manual_seed(0)
    m = tiny(name).eval()
    x, _ = batch()
    ref = m(x)
    m = m.to(memory_format=torch.channels_last_3d)
    out = m(x.contiguous(memory_format=torch.channels_last_3d))
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)


def test_single_sequence_models_read_only_their_sequence():
    for name, seq in (("baseline_t1", 0), ("baseline_fs", 1)):
        m = tiny(name).eval()
        assert len(m.sequences) == 1
        x, _ = batch()
        x2 = x.clone()
        x2[:, 1 - seq] = torch.rand_like(x2[:, 1 - seq])
        torch.testing.assert_close(m(x)["fuse"], m(x2)["fuse"])
        x3 = x.clone()
        x3[:, seq] = 0
        assert not torch.allclose(m(x)["fuse"], m(x3)["fuse"])


def test_param_groups_keep_loss_weights_out_of_weight_decay():
    m = tiny("msfanet")
    groups = m.param_groups(1e-4)
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(no_decay) == 1 and no_decay[0]["params"] == [m.criterion.log_vars]
    n_all = sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_all
    assert len(tiny("msfanet_bce").param_groups(1e-4)) == 1


def test_prediction_mean_of_heads():
    # Heads chosen so that the mean of the three probabilities differs from the primary's.
    out = {"fuse": torch.tensor([2.0, -1.0]), "t1": torch.tensor([0.0, 3.0]), "fs": torch.tensor([-1.0, 0.5])}
    mean = torch.stack([torch.sigmoid(v) for v in out.values()]).mean(0)
    primary = torch.sigmoid(out["fuse"])
    assert not torch.allclose(mean, primary, atol=0.05)
    torch.testing.assert_close(tiny("msfanet", prediction="mean").predict_proba(out), mean)
    torch.testing.assert_close(tiny("msfanet").predict_proba(out), primary)


def test_loss_variants_match_their_definition():
    x, y = batch()
    torch.manual_seed(0)
    eq = tiny("msfanet", loss="equal")
    out = eq(x)
    loss, logs = eq.loss(out, y)
    assert loss.item() == pytest.approx(logs["loss_fuse"] + logs["loss_t1"] + logs["loss_fs"], rel=1e-5)
    fo = tiny("msfanet", loss="fuse_only")
    assert fo.head_names == ("fuse",)
    loss, logs = fo.loss(fo(x), y)
    assert loss.item() == pytest.approx(logs["loss_fuse"], rel=1e-6) and logs["w_fuse"] == 1.0
    hy = tiny("msfanet")
    loss, logs = hy.loss(out, y)  # s = 0 at init: weights 1, loss = sum of BCEs
    assert logs["w_fuse"] == logs["w_t1"] == logs["w_fs"] == 1.0
    assert loss.item() == pytest.approx(logs["loss_fuse"] + logs["loss_t1"] + logs["loss_fs"], rel=1e-5)


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="msfanet"):
        create_model("msfanett")


@pytest.mark.parametrize("name", MODELS)
def test_unknown_config_key_is_a_config_error(name):
    with pytest.raises(ConfigError, match="did you mean 'loss'"):
        create_model(name, preset="tiny", los="bce")


def test_bad_config_values_say_how_to_fix():
    with pytest.raises(ConfigError, match="attn_heads"):
        create_model("msfanet", attn_dim=30, attn_heads=4)
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        create_model("msfanet", preset="tinny")
    with pytest.raises(ConfigError, match="loss must be one of"):
        create_model("baseline", loss="focal")
    with pytest.raises(ConfigError, match="both sequences"):
        create_model("msfanet", sequences=("t1",))
    with pytest.raises(ConfigError, match="strides"):
        create_model("msfanet", strides=[[1, 2, 2]])

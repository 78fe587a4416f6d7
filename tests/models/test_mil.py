"""Per-joint MIL models (distmsfa.models.mil, issue 13): the split, the mirror, the MIL rules."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distmsfa.config import ConfigError
from distmsfa.models import create_model
from distmsfa.models.base import MultiSequenceModel
from distmsfa.models.gradcam import gradcam
from distmsfa.models.mil import JOINT_ORDER, JointMIL, MILConfig, merge_joints, mil_pool, split_joints


class _LateralEdge(MultiSequenceModel):
    """A hand-set 'network': each head's logit is the mean of the half's first W column.

    After the split, column 0 of both halves is the joint's lateral edge (the crop's first
    column for the right joint, its last column, mirrored, for the left joint)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.cfg = None
        self.w = nn.Parameter(torch.ones(()))

    @property
    def head_names(self):
        return ("fuse", "t1")

    def forward(self, x):
        edge = x[..., 0].flatten(1).mean(1) * self.w
        return {"fuse": edge, "t1": -edge}


def _stub(pool="lse"):
    return JointMIL(_LateralEdge(), MILConfig(mil_pool=pool))


def test_split_puts_right_half_first_and_mirrors_the_left_half():
    x = torch.arange(2 * 1 * 1 * 1 * 6, dtype=torch.float32).reshape(2, 1, 1, 1, 6)
    h = split_joints(x)
    assert h.shape == (4, 1, 1, 1, 3)
    assert h[0, 0, 0, 0].tolist() == [0, 1, 2]        # case 0, right half (crop columns 0-2)
    assert h[2, 0, 0, 0].tolist() == [5, 4, 3]        # case 0, left half mirrored (lateral first)
    assert h[3, 0, 0, 0].tolist() == [11, 10, 9]      # case 1, left half
    torch.testing.assert_close(merge_joints(h), x)


def test_a_marked_lateral_edge_scores_its_own_joint():
    assert JOINT_ORDER == ("right", "left")
    m = _stub()
    x = torch.zeros(3, 2, 2, 4, 8)
    x[0, :, :, :, -1] = 1.0   # patient-left lateral edge (W runs right -> left)
    x[1, :, :, :, 0] = 1.0    # patient-right lateral edge
    x[2, :, :, :, 3:5] = 1.0  # midline only: neither half's lateral edge
    j = m.joint_logits(x)
    assert j.shape == (3, 2)
    assert j[0].tolist() == [0.0, 1.0] and j[1].tolist() == [1.0, 0.0] and j[2].tolist() == [0.0, 0.0]
    out = m(x)
    assert set(out) == {"fuse", "t1"} and out["fuse"].shape == (3,)
    torch.testing.assert_close(out["fuse"], torch.logsumexp(j, 1))
    torch.testing.assert_close(out["t1"], torch.logsumexp(-j, 1))  # every head is pooled


def test_mil_rules():
    j = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-3.0, 1.5], [100.0, 100.0]])
    torch.testing.assert_close(mil_pool(j, "max"), torch.tensor([2.0, 0.0, 1.5, 100.0]))
    lse = mil_pool(j, "lse")
    torch.testing.assert_close(lse[:3], torch.log(torch.exp(j[:3]).sum(1)))
    assert lse[3].item() == pytest.approx(100 + math.log(2))  # stable for large logits
    assert (lse >= j.amax(1)).all() and (lse <= j.amax(1) + math.log(2) + 1e-6).all()
    nor = mil_pool(j, "noisy_or")
    p = torch.sigmoid(j[:3])
    torch.testing.assert_close(torch.sigmoid(nor[:3]), 1 - (1 - p[:, 0]) * (1 - p[:, 1]))
    assert torch.isfinite(nor).all() and nor[3].item() == pytest.approx(200.0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        mil_pool(torch.zeros(3), "max")


def test_max_rule_sends_the_gradient_to_the_stronger_joint_only():
    j = torch.tensor([[2.0, -1.0]], requires_grad=True)
    mil_pool(j, "max").sum().backward()
    assert j.grad.tolist() == [[1.0, 0.0]]
    j.grad = None
    mil_pool(j, "lse").sum().backward()
    assert j.grad[0, 1] > 0  # the smooth max lets the weaker joint learn too


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="mil_pool must be one of"):
        create_model("msfanet_mil", preset="tiny", mil_pool="mean")
    with pytest.raises(ConfigError, match="widths"):
        create_model("msfanet_mil", preset="tiny", widths=(4, 8))
    m = create_model("msfanet_mil", preset="tiny")
    assert m.mil_cfg.mil_pool == "lse"
    with pytest.raises(ValueError, match="W must be even"):
        m(torch.rand(1, 2, 8, 32, 47))
    with pytest.raises(ValueError, match=r"\(B, 2, D, H, W\)"):
        m(torch.rand(1, 3, 8, 32, 48))


@pytest.mark.parametrize("name, pool", [("msfanet_mil", "lse"), ("msfanet_mil", "max"), ("baseline_mil", "noisy_or")])
def test_real_network_forward_backward_and_joint_scores(name, pool):
    torch.manual_seed(0)
    m = create_model(name, preset="tiny", mil_pool=pool)
    x = torch.rand(3, 2, 8, 32, 48)
    out = m(x)
    assert set(out) == set(m.head_names) and all(v.shape == (3,) for v in out.values())
    j = m.joint_outputs(x)
    for k in out:
        assert j[k].shape == (3, 2)
        torch.testing.assert_close(out[k], mil_pool(j[k], pool))
    torch.testing.assert_close(m.joint_logits(x), j[m.primary_head])
    loss, _ = m.loss(out, torch.tensor([0.0, 1.0, 1.0]))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    # the same weights score the two halves: swapping + mirroring the crop swaps the joints
    m.eval()
    with torch.no_grad():
        a, b = m.joint_logits(x), m.joint_logits(x.flip(-1))
    torch.testing.assert_close(a, b.flip(1), rtol=1e-4, atol=1e-5)


def test_gradcam_maps_are_crop_shaped_and_follow_the_marked_joint():
    torch.manual_seed(0)
    m = create_model("msfanet_mil", preset="tiny", alpha_init=0.1).eval()
    seen = {}
    tap = m.gradcam_layers()["fuse"]

    def hook(mod, inputs, output):
        seen["shape"] = tuple(output.shape)

    h = tap.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.rand(2, 2, 8, 32, 64))
    h.remove()
    # halves of 32 at the tiny preset's W stride 16: 2 + 2 columns, the whole crop's width
    assert seen["shape"][0] == 2 and seen["shape"][-1] * m.cfg.total_stride[2] == 64
    x = torch.rand(2, 8, 32, 64)
    maps = gradcam(m, x)
    assert set(maps) == {"t1", "fs", "fuse"} and all(v.shape == (8, 32, 64) for v in maps.values())
    # the map's columns are in crop order: the same network on the mirrored crop gives the mirrored map
    mirrored = gradcam(m, x.flip(-1))
    for k in maps:
        torch.testing.assert_close(torch.from_numpy(mirrored[k]).flip(-1), torch.from_numpy(maps[k]),
                                   rtol=1e-3, atol=1e-4)
    assert all(not mod._forward_hooks for mod in m.modules())


def test_state_dict_round_trips_strictly():
    a = create_model("msfanet_mil", preset="tiny", mil_pool="max")
    b = create_model("msfanet_mil", preset="tiny", mil_pool="max")
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(1, 2, 8, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x)["fuse"], b.eval()(x)["fuse"])

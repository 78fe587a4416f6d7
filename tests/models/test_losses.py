"""The hybrid loss: learned weights that stay positive, finite and bounded."""
from __future__ import annotations

import math

import pytest
import torch

from distmsfa.config import ConfigError
from distmsfa.models.losses import UncertaintyWeightedLoss, make_loss

HEADS = ("fuse", "t1", "fs")


def test_hybrid_weights_stay_positive_finite_over_many_steps():
    torch.manual_seed(0)
    loss_fn = make_loss("hybrid", HEADS)
    # Free logits that can drive every BCE to ~0: the regime where exp(-s) L + s would push
    # the weights 1/L to infinity without the bound.
    logits = {h: torch.nn.Parameter(torch.randn(8)) for h in HEADS}
    target = (torch.arange(8) % 2).float()
    opt = torch.optim.Adam([*logits.values(), *loss_fn.parameters()], lr=0.05)
    seen = []
    for _ in range(500):
        loss, logs = loss_fn(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = [logs[f"w_{h}"] for h in HEADS]
        assert all(math.isfinite(v) and v > 0 for v in w) and math.isfinite(loss.item())
        seen.append(w)
    bound = math.exp(3.0)
    assert all(v <= bound * 1.0001 for w in seen for v in w)
    assert max(seen[-1]) > 2.0, "weights never learned (still ~1)"
    assert logs["loss_fuse"] < 0.05


def test_hybrid_optimum_is_inverse_loss():
    # d/ds [exp(-s) L + s] = 0  =>  w = exp(-s) = 1 / L  (inside the bound)
    loss_fn = UncertaintyWeightedLoss(("fuse",), log_weight_bound=5.0)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    out = {"fuse": torch.tensor([0.3, -0.2, 1.0])}
    target = torch.tensor([1.0, 1.0, 0.0])
    for _ in range(800):
        loss, logs = loss_fn(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["w_fuse"] == pytest.approx(1.0 / logs["loss_fuse"], rel=0.02)


def test_unknown_loss_kind():
    with pytest.raises(ConfigError, match="hybrid"):
        make_loss("focal", HEADS)


def test_loss_reports_missing_head():
    with pytest.raises(KeyError, match="t1"):
        make_loss("equal", HEADS)({"fuse": torch.zeros(2)}, torch.zeros(2))

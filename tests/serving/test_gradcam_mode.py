"""Grad-CAM must leave a model in the mode it found it (a served model computes maps and
then goes on predicting: train mode would make BatchNorm statistics drift)."""
from __future__ import annotations

import torch

from distmsfa.models import create_model
from distmsfa.models.gradcam import gradcam


def test_gradcam_keeps_eval_mode_and_predictions():
    torch.manual_seed(0)
    model = create_model("msfanet", preset="tiny").eval()
    x = torch.rand(1, 2, 8, 32, 32)
    with torch.no_grad():
        before = model.predict_proba(model(x))
    gradcam(model, x)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        after = model.predict_proba(model(x))
    assert torch.allclose(before, after, atol=1e-6)

"""Grad-CAM per branch for 3D volumes (paper sec. 1.5), on MONAI's ``GradCAM``.

``gradcam(model, x)`` explains, for each layer in ``model.gradcam_layers()`` (the last conv
of the T1, FS and Fuse branches), one head's logit: the branch's own head where the model
has one (T1 branch -> "t1" head), the primary head otherwise, or ``head`` for all.
Maps are upsampled (trilinear) to the input's ``(D, H, W)`` and scaled per case to [0, 1]
(divided by their max; ReLU makes them non-negative; an all-zero map stays zero).

Where a layer is shared by both sequences that pass through it stacked along the batch
(``2B`` activations for ``B`` inputs: MSFANet's shallow module, the shared backbones of
``bressem``/``shufflenet_dual``/``efficientnet_dual``), its map is split into one map per
sequence, named after the sequence ("t1", "fs").
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn


class _HeadLogit(nn.Module):
    """A dict-returning model seen as a (B, 1) one-class classifier of one head."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.head].reshape(-1, 1)


def _scale01(cam: torch.Tensor) -> torch.Tensor:
    cam = torch.nan_to_num(cam.float()).clamp_min(0)
    peak = cam.flatten(1).amax(1).view(-1, *([1] * (cam.dim() - 1)))
    # Untrained nets give maps ~1e-14; scale any positive map, leave an all-zero one at zero.
    return torch.where(peak > 0, cam / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(cam))


def _remove_new_hooks(model: nn.Module, before: dict[int, tuple[set, set]]) -> None:
    # MONAI registers hooks and never removes them; drop ours so repeated calls don't pile up.
    for m in model.modules():
        fwd, bwd = before.get(id(m), (set(), set()))
        for k in [k for k in m._forward_hooks if k not in fwd]:
            del m._forward_hooks[k]
        for k in [k for k in m._backward_hooks if k not in bwd]:
            del m._backward_hooks[k]


def gradcam(model: nn.Module, x: torch.Tensor, branches: list[str] | None = None,
            head: str | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM maps per branch.

    ``x``: one case ``(2, D, H, W)`` -> maps ``(D, H, W)``; or a batch ``(B, 2, D, H, W)`` ->
    maps ``(B, D, H, W)``.  Float32 numpy arrays in [0, 1].  ``branches`` restricts the
    layers (names from ``model.gradcam_layers()``); ``head`` forces the explained head.
    """
    from monai.visualize import GradCAM

    single = x.dim() == 4
    xb = x.unsqueeze(0) if single else x
    if xb.dim() != 5 or xb.shape[1] != 2:
        raise ValueError(f"gradcam expects (2, D, H, W) or (B, 2, D, H, W), got {tuple(x.shape)}")
    layers = model.gradcam_layers()
    names = list(layers) if branches is None else list(branches)
    unknown = [b for b in names if b not in layers]
    if unknown:
        raise KeyError(f"no Grad-CAM layer for {unknown}; this model has {sorted(layers)}")
    xb = xb.detach().float().to(next(model.parameters()).device)
    b = xb.shape[0]
    out: dict[str, np.ndarray] = {}
    for name in names:
        hd = head or (name if name in model.head_names else model.primary_head)
        if hd not in model.head_names:
            raise KeyError(f"unknown head {hd!r}; this model has {list(model.head_names)}")
        # A fresh wrapper is in training mode, and MONAI restores its wrapper's mode after the
        # pass: it would leave the model in train mode (BatchNorm stats then drift on later
        # predictions).  Give the wrapper the model's own mode.
        wrapper = _HeadLogit(model, hd).train(model.training)
        layer_name = next(f"model.{n}" for n, m in model.named_modules() if m is layers[name])
        before = {id(m): (set(m._forward_hooks), set(m._backward_hooks)) for m in model.modules()}
        try:
            cam = GradCAM(wrapper, target_layers=layer_name, postprocessing=_scale01)
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # MONAI's hook warning; we raise below
                maps = cam(xb, class_idx=0)  # (k*B, 1, D, H, W)
        except IndexError as e:  # MONAI found no gradient at the layer
            raise ValueError(f"the {name!r} Grad-CAM layer does not influence the {hd!r} head; "
                             f"choose another head (heads: {list(model.head_names)})") from e
        finally:
            _remove_new_hooks(model, before)
        maps = maps[:, 0].detach().cpu().numpy().astype(np.float32)
        if maps.shape[0] == b:
            parts = {name: maps}
        else:  # a layer shared by the sequences, run stacked along the batch
            parts = {s: maps[i * b:(i + 1) * b] for i, s in enumerate(model.sequences)}
        for key, arr in parts.items():
            out[key] = arr[0] if single else arr
    return out

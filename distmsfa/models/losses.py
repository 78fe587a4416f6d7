"""Losses over a model's named heads: the paper's hybrid loss and its ablation variants.

All variants take ``outputs`` (dict of ``(B,)`` logits) and ``target`` ``(B,)`` in {0, 1}
and return ``(loss, logs)``; ``logs`` values are detached 0-d tensors on the loss's device
(``float(v)`` reads one; the training loop sums them on the device and transfers once per
epoch, so a step never waits for the GPU).  ``logs`` always holds, for each head, ``loss_<head>`` (its
BCE) and ``w_<head>`` (the weight it currently carries), so every variant logs the same
keys and the hybrid loss's learned weights can be plotted per epoch.

Hybrid loss (paper eq. 4, ``L = b_f L_f + b_1 L_1 + b_2 L_2`` with learned ``b``).  Learning
``b`` directly collapses to ``b = 0``.  We use homoscedastic-uncertainty weighting
(Kendall, Gal & Cipolla, CVPR 2018) in the classification form

    L = sum_i exp(-s_i) * L_i + s_i,        w_i = exp(-s_i) > 0,

where the ``+ s_i`` term stops the weights from collapsing (the optimum is ``w_i = 1/L_i``).
Because ``w_i = 1/L_i`` grows without bound as a training loss goes to 0 (late epochs of a
300-epoch run), ``s_i`` is soft-bounded: ``s = B * tanh(s_raw / B)`` with ``B =
log_weight_bound`` (default 3, so ``w`` stays in ``[e^-3, e^3] ~ [0.05, 20]``) and it keeps
a gradient everywhere.  ``s_raw`` starts at 0 (all weights 1, i.e. the 'equal' variant).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distmsfa.config import ConfigError

LOSS_KINDS = ("hybrid", "equal", "fuse_only", "bce")


def _bce(outputs: dict[str, torch.Tensor], target: torch.Tensor, heads: Sequence[str]) -> list[torch.Tensor]:
    missing = [h for h in heads if h not in outputs]
    if missing:
        raise KeyError(f"loss expects heads {list(heads)}, outputs have {sorted(outputs)}")
    t = target.float().reshape(-1)
    return [F.binary_cross_entropy_with_logits(outputs[h].float().reshape(-1), t) for h in heads]


class HeadsLoss(nn.Module):
    """Fixed-weight sum of per-head BCE terms ('equal': all 1; 'fuse_only'/'bce': primary only)."""

    def __init__(self, heads: Sequence[str], weights: Sequence[float]) -> None:
        super().__init__()
        self.heads = tuple(heads)
        self.weights = tuple(float(w) for w in weights)
        self.used = tuple(h for h, w in zip(self.heads, self.weights) if w != 0)
        # Buffers (not in the state dict): they follow the model to its device, so a step
        # never builds a tensor from Python numbers on the GPU (a blocking host copy).
        self.register_buffer("_w_used", torch.tensor([w for w in self.weights if w != 0]), persistent=False)
        self.register_buffer("_w_all", torch.tensor(self.weights), persistent=False)

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor):
        terms = torch.stack(_bce(outputs, target, self.used))
        loss = (self._w_used.to(terms.device) * terms).sum()
        # Logs stay on the device (0-d detached tensors): no host sync per step; the
        # training loop sums them on the device and reads them once per epoch.
        logs = {f"loss_{h}": v for h, v in zip(self.used, terms.detach().unbind())}
        logs.update({f"w_{h}": w for h, w in zip(self.heads, self._w_all.to(terms.device).unbind())})
        return loss, logs


class UncertaintyWeightedLoss(nn.Module):
    """The hybrid loss: ``sum_i exp(-s_i) L_i + s_i`` with bounded learned ``s_i`` (see module doc)."""

    def __init__(self, heads: Sequence[str], log_weight_bound: float = 3.0) -> None:
        super().__init__()
        if log_weight_bound <= 0:
            raise ConfigError(f"hybrid loss: log_weight_bound must be > 0, got {log_weight_bound}")
        self.heads = tuple(heads)
        self.bound = float(log_weight_bound)
        self.log_vars = nn.Parameter(torch.zeros(len(self.heads)))

    def log_variances(self) -> torch.Tensor:
        return self.bound * torch.tanh(self.log_vars / self.bound)

    def effective_weights(self) -> dict[str, float]:
        w = torch.exp(-self.log_variances().detach())
        return {h: float(v) for h, v in zip(self.heads, w)}

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor):
        terms = torch.stack(_bce(outputs, target, self.heads))
        s = self.log_variances()
        w = torch.exp(-s)
        loss = (w * terms + s).sum()
        # Logs stay on the device (0-d detached tensors, see HeadsLoss.forward).
        logs = {f"loss_{h}": v for h, v in zip(self.heads, terms.detach().unbind())}
        logs.update({f"w_{h}": v for h, v in zip(self.heads, w.detach().unbind())})
        return loss, logs


def make_loss(kind: str, heads: Sequence[str], primary: str = "fuse", log_weight_bound: float = 3.0) -> nn.Module:
    """Build a loss over ``heads``.  ``kind``: hybrid | equal | fuse_only | bce (= fuse_only)."""
    heads = tuple(heads)
    if kind == "hybrid":
        return UncertaintyWeightedLoss(heads, log_weight_bound)
    if kind == "equal":
        return HeadsLoss(heads, [1.0] * len(heads))
    if kind in ("fuse_only", "bce"):
        return HeadsLoss(heads, [1.0 if h == primary else 0.0 for h in heads])
    raise ConfigError(f"unknown loss {kind!r}; choose one of {', '.join(LOSS_KINDS)}")

"""Learning-rate schedules, per epoch: ``lr(epoch) = cfg.lr * lr_factor(cfg, epoch)``.

``constant`` (default, the paper: Adam at a fixed 1e-4) and ``cosine`` (half-cosine decay
from ``lr`` to ``lr * min_lr_ratio`` over the epochs after the warm-up, as in SGDR without restarts).
Either may start with ``warmup_epochs`` of linear warm-up (``lr * (e + 1) / (warmup + 1)``
in epoch ``e``), which keeps the first large Adam steps from wrecking freshly initialised
BatchNorm statistics at small batch sizes.

The factor is a pure function of the epoch, and the ``LambdaLR`` that applies it is part of
the loop's checkpoint state (``state["scheduler"]``), so a resumed run continues the same curve.
"""
from __future__ import annotations

import math

import torch

from distmsfa.training.config import TrainConfig


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of ``cfg.lr`` for training epoch ``epoch`` (0-based)."""
    return _Factor(cfg)(epoch)


class _Factor:
    """The schedule as a callable object of plain numbers (LambdaLR keeps its ``__dict__`` in
    the scheduler state, so the checkpoint holds the schedule, and only numbers)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.kind, self.warmup, self.epochs, self.floor = cfg.lr_schedule, cfg.warmup_epochs, cfg.epochs, cfg.min_lr_ratio

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (epoch - self.warmup) / max(1, self.epochs - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Sets the optimizer's lr for epoch 0 now; call ``.step()`` after each epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(cfg))

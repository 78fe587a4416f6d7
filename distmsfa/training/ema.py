"""Exponential moving average (EMA) of a model's weights (Polyak averaging; timm's ModelEmaV2).

The loop (:func:`distmsfa.training.loop.fit_fold`) updates a :class:`WeightEMA` after every
optimizer step and, with ``TrainConfig.ema_decay > 0``, evaluates and keeps the averaged
weights instead of the raw ones: every validation / inner / external score and the selected
checkpoint (``best.pt``) are the EMA's.  Why: on small cohorts the raw weights' validation
curve wanders from epoch to epoch (the demo's last epoch scored 0.09-0.12 AUC below its best);
the average over the last ~``1 / (1 - decay)`` steps is a smoother, flatter point.

The averaging is torch's own :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` (foreach ``lerp``), ``use_buffers=True``:
BatchNorm's running statistics are averaged along with the parameters rather than copied
from the raw model, so the averaged weights are scored with statistics that describe the
activations of weights like them (the raw model's statistics track the raw, moving weights).
The decay is read per update from a host-side counter (no device sync on a GPU).

The EMA never enters training: :meth:`WeightEMA.swapped` copies its tensors into the
training module for an evaluation and the training tensors back afterwards (in place, so a
``torch.compile``-d or DDP-wrapped view of the module keeps working unchanged).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def effective_decay(decay: float, n: int, warmup: bool) -> float:
    """The decay of the update that follows ``n`` averaged updates.  With ``warmup`` it is
    ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's ExponentialMovingAverage ``num_updates``
    rule, timm's ModelEma): early in training the weights move fast, and an average with a
    horizon of ``1 / (1 - decay)`` steps would stay close to the first steps' weights for many
    epochs, so the horizon grows with the steps taken (0.1 at n=0, 0.5 at n=8, 0.9 at n=80)."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


class WeightEMA:
    """The EMA of ``model``'s parameters and buffers (on ``model``'s device).

    The first :meth:`update` copies the model (the average of one); each later one moves the
    average toward the model by ``1 - effective_decay(decay, n, warmup)``."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"WeightEMA: decay={decay} must be in (0, 1)")
        self.decay, self.warmup = float(decay), bool(warmup)
        self._n = 0  # host copy of AveragedModel.n_averaged (reading the tensor would sync a GPU)
        self._now = self.decay

        def avg(ema: list[torch.Tensor], cur: list[torch.Tensor], n: Any) -> None:
            get_ema_multi_avg_fn(self._now)(ema, cur, n)

        self.averaged = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged copy of the model (eval it, take its ``state_dict``)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return self._n

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self._now = effective_decay(self.decay, self._n, self.warmup)
        self.averaged.update_parameters(model)
        self._n += 1

    def start_from(self, model: torch.nn.Module) -> None:
        """Make ``model``'s current weights the average of one (a resume from a checkpoint that
        carried no EMA)."""
        with torch.no_grad():
            for e, m in zip(_tensors(self.module), _tensors(model), strict=True):
                e.copy_(m)
        self._n = 1
        self.averaged.n_averaged.fill_(1)

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable state (CPU tensors): the averaged module's state dict and the count."""
        return {"model": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
                "updates": self._n, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self._n = int(state["updates"])
        self.averaged.n_averaged.fill_(self._n)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[None]:
        """``model`` holds the EMA's parameters and buffers inside the block, its own after it."""
        own = [t.detach().clone() for t in _tensors(model)]
        with torch.no_grad():
            for t, e in zip(_tensors(model), _tensors(self.module), strict=True):
                t.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, o in zip(_tensors(model), own, strict=True):
                    t.copy_(o)


def _tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(), *m.buffers()]

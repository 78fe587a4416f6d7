"""The contract every registered model keeps, so one training loop trains them all.

Input
    ``x``: float tensor ``(B, 2, D, H, W)``, channel order ``(T1, FS)`` (``distmsfa.SEQUENCES``),
    values in [0, 1].  Every model receives both sequences; a single-sequence model
    reads only the channels named in ``model.sequences`` and ignores the other.
Output of ``forward``
    ``dict[str, Tensor]`` of head logits, each ``(B,)`` (pre-sigmoid, binary:
    1 = axSpA).  ``model.primary_head`` names the head used for prediction.
``model.loss(outputs, target)``
    ``target`` float ``(B,)`` in {0, 1}.  Returns ``(loss, logs)`` where ``loss`` is a
    scalar tensor and ``logs`` a ``dict[str, Tensor]`` of detached 0-d tensors on the
    loss's device (e.g. the hybrid loss's effective
    weights ``w_fuse``, ``w_t1``, ``w_fs``) to be logged each epoch.
``model.predict_proba(outputs)``
    ``(B,)`` probabilities of axSpA (the primary head by default, or the mean of heads).
``model.param_groups(weight_decay)``
    optimizer param groups; loss-weight parameters carry no weight decay.
``model.gradcam_layers()``
    ``dict[str, nn.Module]``: branch name -> the last conv layer to explain.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

SEQUENCE_INDEX = {"t1": 0, "fs": 1}


class MultiSequenceModel(nn.Module):
    """Base class with the shared plumbing; subclasses implement ``forward`` and set heads."""

    sequences: tuple[str, ...] = ("t1", "fs")
    primary_head: str = "fuse"

    def __init__(self, loss: nn.Module | None = None, prediction: str = "primary") -> None:
        super().__init__()
        if prediction not in ("primary", "mean"):
            raise ValueError(f"prediction must be 'primary' or 'mean', got {prediction!r}")
        self.prediction = prediction
        self.criterion = loss

    def select(self, x: torch.Tensor, seq: str) -> torch.Tensor:
        """Return ``(B, 1, D, H, W)`` for one sequence name ('t1' or 'fs')."""
        i = SEQUENCE_INDEX[seq]
        return x[:, i : i + 1]

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor):
        if self.criterion is None:
            raise NotImplementedError(f"{type(self).__name__} has no loss")
        return self.criterion(outputs, target)

    def predict_proba(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.prediction == "mean":
            return torch.stack([torch.sigmoid(v.float()) for v in outputs.values()]).mean(0)
        return torch.sigmoid(outputs[self.primary_head].float())

    def param_groups(self, weight_decay: float) -> list[dict]:
        loss_params = {id(p) for p in (self.criterion.parameters() if self.criterion is not None else [])}
        decay = [p for p in self.parameters() if p.requires_grad and id(p) not in loss_params]
        groups = [{"params": decay, "weight_decay": weight_decay}]
        no_decay = [p for p in self.parameters() if p.requires_grad and id(p) in loss_params]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return {}

    @property
    def head_names(self) -> Sequence[str]:
        return (self.primary_head,)

"""Per-joint multiple-instance models (issue 13): one network scores each sacroiliac joint.

Tensor contract (on top of base.py's):

    x (B, 2, D, H, W), canonical LIP crop: W runs patient right -> left (docs/preprocessing.md),
    so x[..., :W/2] holds the RIGHT joint and x[..., W/2:] the LEFT joint.  W must be even.
    The left half is mirrored along W, so both halves run lateral -> midline and the joints
    look alike to the shared weights; the halves are stacked along the batch (2B volumes of
    width W/2: right halves first, then left halves) and scored by one MSFANet-family network.
    Joint logits per head: (B, 2), columns [right, left]  (``joint_outputs`` / ``joint_logits``).
    Patient logit per head: the MIL rule ``mil_pool`` over the two columns, (B,), so the
    existing hybrid loss, loop, selection, bundle and predictor see an ordinary model that is
    trained on patient labels only.

MIL rules (``mil_pool``; logits a, b of the two joints):
    max       max(a, b): the patient is as positive as its more positive joint; the gradient
              reaches only that joint's half.
    lse       log(e^a + e^b) (default): a smooth max (>= max, at most max + log 2).  Both
              joints get gradient, weighted by softmax(a, b), so early in training the joint
              that will turn out positive is not decided by initial noise alone; its odds are
              the sum of the joints' odds, close to noisy-or when findings are rare.
    noisy_or  logit of 1 - (1 - p_a)(1 - p_b) = log(e^a + e^b + e^(a+b)): the patient is
              positive when either joint is, joints independent.  Two moderate joints
              compound into a confident patient, which overstates bilateral weak evidence.

Grad-CAM: every layer of ``gradcam_layers()`` is wrapped so that its output is reassembled
into one crop-shaped map (B, C, d, h, 2w) (left half mirrored back) before the rest of the
network sees the halves again; the Grad-CAM target is that reassembled map, so
``distmsfa.models.gradcam.gradcam`` gives (D, H, W) maps in crop coordinates like any model.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distmsfa.config import Config, ConfigError, require
from distmsfa.models.base import MultiSequenceModel
from distmsfa.models.blocks import build_config
from distmsfa.models.msfanet import PRESETS, MSFANet, MSFANetConfig
from distmsfa.models.registry import register_model

MIL_POOLS = ("max", "lse", "noisy_or")
#: Column order of ``joint_logits``: the crop's W axis runs patient right -> left.
JOINT_ORDER = ("right", "left")


@dataclasses.dataclass(frozen=True)
class MILConfig(Config):
    mil_pool: str = "lse"  # max | lse | noisy_or (module doc)

    def __post_init__(self) -> None:
        require(self.mil_pool in MIL_POOLS, type(self).__name__,
                f"mil_pool must be one of {MIL_POOLS}, got {self.mil_pool!r}")


def mil_pool(joint: torch.Tensor, rule: str) -> torch.Tensor:
    """(B, 2) joint logits -> (B,) patient logit by the rule ``max`` | ``lse`` | ``noisy_or``."""
    if joint.dim() != 2 or joint.shape[1] != 2:
        raise ValueError(f"mil_pool expects (B, 2) joint logits, got {tuple(joint.shape)}")
    if rule == "max":
        return joint.amax(1)
    if rule == "lse":
        return torch.logsumexp(joint, 1)
    if rule == "noisy_or":
        return torch.logsumexp(torch.cat([joint, joint.sum(1, keepdim=True)], 1), 1)
    raise ConfigError(f"mil_pool must be one of {MIL_POOLS}, got {rule!r}")


def split_joints(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) crop -> (2B, C, D, H, W/2): right halves, then mirrored left halves."""
    w = x.shape[-1]
    if w % 2:
        raise ValueError(f"per-joint (MIL) models split the crop's W axis (patient right -> left) into the two "
                         f"joints' halves, so W must be even; got W = {w}: preprocess with an even crop_size W")
    return torch.cat([x[..., : w // 2], x[..., w // 2:].flip(-1)], 0)


def merge_joints(halves: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_joints`: (2B, C, d, h, w) -> (B, C, d, h, 2w) in crop order."""
    b = halves.shape[0] // 2
    return torch.cat([halves[:b], halves[b:].flip(-1)], -1)


class _Tap(nn.Module):
    """The Grad-CAM target: the crop-shaped map (``view_as`` gives hooks a distinct tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)


class _JointMosaic(nn.Module):
    """A layer whose (2B, ...) output passes through a crop-shaped (B, ..., 2w) tap and back."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.tap = _Tap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        m = self.tap(merge_joints(y))
        return split_joints(m)


class JointMIL(MultiSequenceModel):
    """An MSFANet-family network applied to each joint's half of the crop, MIL-pooled per head."""

    def __init__(self, net: MSFANet, mil: MILConfig) -> None:
        super().__init__(net.criterion, net.prediction)
        self.net = net
        self.cfg = net.cfg
        self.mil_cfg = mil
        self.sequences = net.sequences
        self.primary_head = net.primary_head
        self._cam: dict[str, nn.Module] = {}
        for name, layer in net.gradcam_layers().items():
            parent, attr = self._parent_of(layer)
            wrapped = _JointMosaic(layer)
            setattr(parent, attr, wrapped)
            self._cam[name] = wrapped.tap

    def _parent_of(self, layer: nn.Module) -> tuple[nn.Module, str]:
        for _, mod in self.net.named_modules():
            for attr, child in mod.named_children():
                if child is layer:
                    return mod, attr
        raise ValueError("Grad-CAM layer not found in the network")  # pragma: no cover - construction bug

    @property
    def head_names(self):
        return self.net.head_names

    def joint_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-head joint logits ``(B, 2)``, columns [right, left] (``JOINT_ORDER``)."""
        if x.dim() != 5 or x.shape[1] != 2:
            raise ValueError(f"expected (B, 2, D, H, W) input, got {tuple(x.shape)}")
        b = x.shape[0]
        out = self.net(split_joints(x))
        return {k: v.reshape(2, b).t() for k, v in out.items()}

    def joint_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The primary head's joint logits ``(B, 2)`` [right, left]: the per-joint scores."""
        return self.joint_outputs(x)[self.primary_head]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: mil_pool(v, self.mil_cfg.mil_pool) for k, v in self.joint_outputs(x).items()}

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return dict(self._cam)


def _factory(defaults: dict):
    def make(**cfg) -> JointMIL:
        cfg = {**defaults, **cfg}
        mil = MILConfig.from_dict({k: cfg.pop(k) for k in [f.name for f in dataclasses.fields(MILConfig)] if k in cfg})
        return JointMIL(MSFANet(build_config(MSFANetConfig, PRESETS, cfg)), mil)

    return make


for _name, _defaults in {
    "msfanet_mil": {"fusion": "msfa", "loss": "hybrid"},            # MSFANet per joint
    "baseline_mil": {"fusion": "concat", "loss": "bce"},            # concat Baseline per joint
}.items():
    register_model(_name)(_factory(_defaults))

"""Three comparison models built on a standard backbone shared by both sequences (Tables 3-4).

Each runs one backbone over T1 and FS (weights shared: the two sequences are stacked along
the batch and pass once), pools each sequence's features and classifies their
concatenation (decision-level fusion; the paper describes its ShuffleNet/EfficientNet
baselines this way, and Bressem et al. 2022 fuse pooled ResNet embeddings of T1 and STIR).
``shared=False`` gives each sequence its own backbone.

* ``bressem`` - Bressem et al. 2022 (Radiology, axSpA on SIJ MRI): MONAI 3D ``ResNet``
  (basic blocks, ResNet-18 layout at half width by default).
* ``shufflenet_dual`` - dual-branch 3D ShuffleNetV2 (shufflenet3d.py; MONAI has none).
* ``efficientnet_dual`` - dual-branch 3D EfficientNet (MONAI ``EfficientNet``; b0 by default).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distmsfa.config import Config, require
from distmsfa.models.base import MultiSequenceModel
from distmsfa.models.blocks import freeze_lists, Head, build_config
from distmsfa.models.losses import LOSS_KINDS, make_loss
from distmsfa.models.registry import register_model
from distmsfa.models.shufflenet3d import ShuffleNetV2Features

# EfficientNet-b0 block definitions (as in monai.networks.nets.EfficientNetBN).
_EFFNET_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)


@dataclasses.dataclass(frozen=True)
class DualBackboneConfig(Config):
    """``widths``/``depths`` mean: ResNet ``block_inplanes``/``layers``; ShuffleNet stage
    channels (stem, stages..., last conv)/repeats; EfficientNet (width, depth) coefficients
    as ``widths=(w,)``, ``depths=(d,)``."""

    widths: tuple[float, ...] = ()
    depths: tuple[float, ...] = ()
    shared: bool = True
    loss: str = "bce"
    log_weight_bound: float = 3.0
    prediction: str = "primary"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = type(self).__name__
        freeze_lists(self, "widths", "depths")
        require(len(self.widths) > 0 and all(w > 0 for w in self.widths), n, f"widths must be positive, got {self.widths!r}")
        require(len(self.depths) > 0 and all(d > 0 for d in self.depths), n, f"depths must be positive, got {self.depths!r}")
        require(self.loss in LOSS_KINDS, n, f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        require(self.prediction in ("primary", "mean"), n, f"prediction must be 'primary' or 'mean', got {self.prediction!r}")
        require(0.0 <= self.dropout < 1.0, n, f"dropout must be in [0, 1), got {self.dropout}")


class _ResNetFeatures(nn.Module):
    def __init__(self, cfg: DualBackboneConfig) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        require(len(cfg.widths) == 4 and len(cfg.depths) == 4, "DualBackboneConfig",
                "bressem needs widths (block_inplanes) and depths (layers) of 4 entries each")
        self.net = ResNet("basic", [int(d) for d in cfg.depths], [int(w) for w in cfg.widths], spatial_dims=3,
                          n_input_channels=1, conv1_t_size=3, conv1_t_stride=1, feed_forward=False)
        self.out_features = int(cfg.widths[3])

    def forward(self, x):
        return self.net(x)

    def last_conv(self) -> nn.Module:
        return self.net.layer4[-1].conv2


class _ShuffleFeatures(ShuffleNetV2Features):
    def __init__(self, cfg: DualBackboneConfig) -> None:
        require(len(cfg.widths) == len(cfg.depths) + 2, "DualBackboneConfig",
                "shufflenet needs widths = (stem, one per stage, last conv) and one depth per stage")
        super().__init__(1, [int(w) for w in cfg.widths], [int(d) for d in cfg.depths])

    def last_conv(self) -> nn.Module:
        return self.conv_last[0]


def _symmetric_padding(net: nn.Module) -> None:
    """Replace MONAI's static TF-style 'same' padding, computed once for ``image_size`` (and
    wrong, even crashing, for other sizes such as 24 slices) by the conv's own symmetric
    ``k // 2`` padding, so the net takes any input size."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.padding._ConstantPadNd):
                setattr(module, name, nn.Identity())
            elif isinstance(child, nn.Conv3d):
                child.padding = tuple(k // 2 for k in child.kernel_size)


class _EffNetFeatures(nn.Module):
    def __init__(self, cfg: DualBackboneConfig) -> None:
        super().__init__()
        from monai.networks.nets import EfficientNet

        require(len(cfg.widths) == 1 and len(cfg.depths) == 1, "DualBackboneConfig",
                "efficientnet needs widths=(width_coefficient,) and depths=(depth_coefficient,)")
        self.net = EfficientNet(list(_EFFNET_BLOCKS), spatial_dims=3, in_channels=1, num_classes=1,
                                width_coefficient=float(cfg.widths[0]), depth_coefficient=float(cfg.depths[0]),
                                dropout_rate=0.0, drop_connect_rate=0.2)
        _symmetric_padding(self.net)
        self.out_features = self.net._fc.in_features
        self.net._fc = nn.Identity()  # pooled features, the classifier sits on the concatenation

    def forward(self, x):
        return self.net(x)

    def last_conv(self) -> nn.Module:
        return self.net._conv_head


class DualBackbone(MultiSequenceModel):
    def __init__(self, cfg: DualBackboneConfig, backbone: type[nn.Module]) -> None:
        super().__init__(make_loss(cfg.loss, ("fuse",), "fuse", cfg.log_weight_bound), cfg.prediction)
        self.cfg = cfg
        n = 1 if cfg.shared else len(self.sequences)
        self.backbones = nn.ModuleList(backbone(cfg) for _ in range(n))
        self.head = Head(self.backbones[0].out_features * len(self.sequences), cfg.dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        if self.cfg.shared:
            feats = self.backbones[0](torch.cat([self.select(x, s) for s in self.sequences], 0)).split(b, 0)
        else:
            feats = [net(self.select(x, s)) for net, s in zip(self.backbones, self.sequences)]
        return {"fuse": self.head(torch.cat(list(feats), 1))}

    def gradcam_layers(self) -> dict[str, nn.Module]:
        if self.cfg.shared:  # activations hold both sequences stacked; gradcam() splits them
            return {"shared": self.backbones[0].last_conv()}
        return {s: net.last_conv() for net, s in zip(self.backbones, self.sequences)}


_FAMILIES = {
    # ResNet-18 layout at half width: 8.3 M shared parameters.
    "bressem": (_ResNetFeatures, {"widths": (32, 64, 128, 256), "depths": (2, 2, 2, 2)},
                {"widths": (4, 8, 16, 16), "depths": (1, 1, 1, 1)}),
    # ShuffleNetV2 at 2x width.
    "shufflenet_dual": (_ShuffleFeatures, {"widths": (24, 244, 488, 976, 2048), "depths": (4, 8, 4)},
                        {"widths": (8, 16, 32, 64, 64), "depths": (1, 1, 1)}),
    # EfficientNet-b0 coefficients.
    "efficientnet_dual": (_EffNetFeatures, {"widths": (1.0,), "depths": (1.0,)},
                          {"widths": (0.25,), "depths": (0.25,)}),
}


def _factory(backbone, default, tiny):
    def make(**cfg):
        # "demo" (the cpu profile's preset, fitted to MSFANet's stages) is "tiny" for these
        # standard backbones, so every registered model runs under one profile.
        presets = {"default": default, "tiny": tiny, "demo": tiny}
        return DualBackbone(build_config(DualBackboneConfig, presets, cfg), backbone)

    return make


for _name, (_bb, _default, _tiny) in _FAMILIES.items():
    register_model(_name)(_factory(_bb, _default, _tiny))

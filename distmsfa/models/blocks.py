"""Shared 3D building blocks: the paper's residual block, heads, and the preset helper."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from distmsfa.config import Config, ConfigError

Triple = tuple[int, int, int]


def conv3(cin: int, cout: int, stride: Sequence[int] | int = 1) -> nn.Conv3d:
    # No bias: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv3d(cin, cout, 3, stride=tuple(stride) if not isinstance(stride, int) else stride,
                     padding=1, bias=False)


class ResBlock3d(nn.Module):
    """Residual block of the paper (sec. 1.3.1): two 3x3x3 conv-BN(-ReLU) layers plus a skip.

    The skip is a strided 1x1x1 conv + BN whenever the shape changes (ResNet option B),
    the identity otherwise.  ``conv2`` is the block's last conv (Grad-CAM target).
    """

    def __init__(self, cin: int, cout: int, stride: Sequence[int] | int = 1) -> None:
        super().__init__()
        s = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv1 = conv3(cin, cout, s)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = conv3(cout, cout)
        self.bn2 = nn.BatchNorm3d(cout)
        self.act = nn.ReLU(inplace=True)
        self.skip: nn.Module = nn.Identity()
        if cin != cout or any(v != 1 for v in s):
            self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=s, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.skip(x))


HEAD_POOLS = ("avg", "max", "avgmax")


class Head(nn.Module):
    """Global pool + linear -> one logit per sample, shape (B,).

    ``pool``: ``avg`` (the paper's global average pooling), ``max`` (global max: a finding
    that fills a few voxels of the map is not diluted by the rest of the volume), or
    ``avgmax`` (both, concatenated: 2 x cin features)."""

    def __init__(self, cin: int, dropout: float = 0.0, pool: str = "avg") -> None:
        super().__init__()
        if pool not in HEAD_POOLS:
            raise ValueError(f"head pool must be one of {HEAD_POOLS}, got {pool!r}")
        self.pool = pool
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(2 * cin if pool == "avgmax" else cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            f = x.flatten(2)
            if self.pool == "avg":
                x = f.mean(-1)
            elif self.pool == "max":
                x = f.amax(-1)
            else:
                x = torch.cat([f.mean(-1), f.amax(-1)], 1)
        return self.fc(self.drop(x)).squeeze(-1)


def build_config(cls: type[Config], presets: Mapping[str, Mapping[str, Any]], cfg: Mapping[str, Any]):
    """``cls.from_dict(presets[preset] | cfg)``: ``preset`` picks a named size ('default', 'tiny')."""
    cfg = dict(cfg)
    preset = cfg.pop("preset", "default")
    if preset not in presets:
        close = difflib.get_close_matches(str(preset), list(presets), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{cls.__name__}: unknown preset {preset!r}{hint}; choose one of {', '.join(presets)}")
    return cls.from_dict({**presets[preset], **cfg})


def freeze_lists(cfg: Config, *fields: str) -> None:
    """Turn (nested) lists from YAML/JSON into tuples on a frozen config, in ``__post_init__``."""
    def conv(v):
        return tuple(conv(x) for x in v) if isinstance(v, (list, tuple)) else v

    for f in fields:
        object.__setattr__(cfg, f, conv(getattr(cfg, f)))


def check_triples(name: str, field: str, value: Any, n: int) -> None:
    ok = isinstance(value, tuple) and len(value) == n and all(
        isinstance(s, tuple) and len(s) == 3 and all(isinstance(v, int) and v >= 1 for v in s) for s in value)
    if not ok:
        raise ConfigError(f"{name}: {field} must be {n} triples of positive ints (D, H, W strides), got {value!r}")


def total_stride(strides: Sequence[Sequence[int]]) -> Triple:
    out = [1, 1, 1]
    for s in strides:
        for i in range(3):
            out[i] *= s[i]
    return tuple(out)  # type: ignore[return-value]


def config_fields(cls: type[Config]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

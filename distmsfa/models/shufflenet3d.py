"""A compact 3D ShuffleNetV2 feature extractor (Ma et al. 2018; 3D form of Köpüklü et al. 2019,
"Resource efficient 3D convolutional neural networks").  MONAI has no ShuffleNet."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c = x.shape[:2]
    return x.view(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(b, c, *x.shape[2:])


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm3d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two downsampling branches (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_cbr(cin, cin, 3, stride, groups=cin, act=False), _cbr(cin, mid))
        else:
            self.branch1 = nn.Identity()
        bin_ = cin if stride > 1 else cin // 2
        self.branch2 = nn.Sequential(_cbr(bin_, mid), _cbr(mid, mid, 3, stride, groups=mid, act=False), _cbr(mid, mid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Features(nn.Module):
    """(N, cin, D, H, W) -> (N, channels[-1]) pooled features.  ``conv_last[0]`` is the last conv."""

    def __init__(self, cin: int, channels: Sequence[int], repeats: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != len(repeats) + 2:
            raise ValueError("channels needs len(repeats) + 2 entries (stem, one per stage, last conv)")
        self.stem = nn.Sequential(_cbr(cin, channels[0], 3, stride=(1, 2, 2)), nn.MaxPool3d(3, 2, 1))
        units: list[nn.Module] = []
        c = channels[0]
        for cout, n in zip(channels[1:-1], repeats):
            units += [ShuffleUnit(c, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            c = cout
        self.stages = nn.Sequential(*units)
        self.conv_last = _cbr(c, channels[-1])
        self.out_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.stages(self.stem(x))).flatten(2).mean(-1)

"""Small image models used by fedhet's methods (METHODS.md §8).

All models take ``(B, C, 28, 28)`` float input (Fashion-MNIST / up-sampled digits) and return logits.
Models that CoCoFL and GENE-FL cut into units expose them as ``model.units`` (an ``nn.ModuleList``),
run in order by ``forward``; a unit is a parameterised block together with its norm layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedhet.models.catalog import AFM_ARCHS


class CNNS(nn.Module):
    """``cnn_s``: two 3x3 conv layers and two FC layers, no norm (421,642 params at width 1).

    ``width`` scales every hidden layer (HeteroFL/FedRolex-style submodels keep ``ceil(width*C)``
    units; the classifier always keeps all classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, h = (max(1, math.ceil(width * c)) for c in (32, 64, 128))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 7 * 7, h)
        self.fc2 = nn.Linear(h, num_classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _conv_bn(cin: int, cout: int, pool: bool = False, static_bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, track_running_stats=not static_bn),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CNNB(nn.Module):
    """``cnn_b``: six freezable units (METHODS.md §8; 35,674 params at width 1).

    u0 conv 1→16; u1 conv 16→16 + pool; u2 conv 16→32; u3 conv 32→32 + pool; u4 conv 32→64 + global
    average pool; u5 FC 64→classes. Convs are 3x3 without bias, each followed by BatchNorm and ReLU.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        static_bn: bool = False,
    ) -> None:
        super().__init__()
        c = [max(1, math.ceil(width * k)) for k in (16, 16, 32, 32, 64)]
        self.units = nn.ModuleList(
            [
                _conv_bn(in_channels, c[0], static_bn=static_bn),
                _conv_bn(c[0], c[1], pool=True, static_bn=static_bn),
                _conv_bn(c[1], c[2], static_bn=static_bn),
                _conv_bn(c[2], c[3], pool=True, static_bn=static_bn),
                nn.Sequential(
                    *_conv_bn(c[3], c[4], static_bn=static_bn),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                ),
                nn.Linear(c[4], num_classes),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, track_running_stats=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetS(nn.Module):
    """A small ResNet (stem + three stages of one basic block) with **static BN**.

    Static BN (``track_running_stats=False``) uses batch statistics at train and test time, as
    HeteroFL and FIARSE do for submodels, so no running statistics need aggregating. Units: stem,
    stage1, stage2, stage3, head (usable by CoCoFL's window planner).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c = [max(1, math.ceil(width * k)) for k in (16, 32, 64)]
        self.units = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False),
                    nn.BatchNorm2d(c[0], track_running_stats=False),
                    nn.ReLU(),
                ),
                _BasicBlock(c[0], c[0], 1),
                _BasicBlock(c[0], c[1], 2),
                _BasicBlock(c[1], c[2], 2),
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c[2], num_classes)),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


class AFMExtractor(nn.Module):
    """Feature extractor of the pFedAFM CNN family: conv-pool-conv-pool-FC-FC, output dim ``feat``."""

    def __init__(self, c2: int, h1: int, in_channels: int = 1, feat: int = 500) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 5)
        self.conv2 = nn.Conv2d(16, c2, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 4 * 4, h1)
        self.fc2 = nn.Linear(h1, feat)
        self.out_features = feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return torch.relu(self.fc2(x))


class AFMNet(nn.Module):
    """pFedAFM local model F = h ∘ f (METHODS.md §8, ``afm_cnn1…5``)."""

    def __init__(self, arch: str, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        c2, h1 = AFM_ARCHS[arch]
        self.extractor = AFMExtractor(c2, h1, in_channels)
        self.header = nn.Linear(self.extractor.out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.header(self.extractor(x))

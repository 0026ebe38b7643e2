"""Shared fixtures: a seeded generator, a fixed hypothesis profile, and small float64 test networks."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

settings.register_profile(
    "deconv",
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("deconv")

# The test tensors are tiny: on a small shared machine a second thread only adds contention
# (a 48x48 float64 convolution runs about 20x slower on two busy cores than on one).
torch.set_num_threads(1)


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A generator seeded from the test's id: the same numbers at every run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


class Arch(NamedTuple):
    """A float64 eval-mode model, images for it, and oracle taps for its functional layers."""

    model: nn.Module
    images: torch.Tensor
    taps: dict


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def batch_norm(channels: int, gen: torch.Generator) -> nn.BatchNorm2d:
    """BatchNorm2d with random statistics and affine parameters (some weights negative)."""
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.empty(channels).uniform_(-1.5, 1.5, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.empty(channels).uniform_(0.2, 3.0, generator=gen))
    return bn


def zfnet_like() -> nn.Sequential:
    """ZFNet's first layers scaled down: 7x7 stride-2 conv, overlapping 3x3/2 pools; 48x48 -> 10 classes.

    Receptive fields (size, stride, offset): "0" (7, 2, -1), "2" (11, 4, -3), "3" (27, 8, -11),
    "5" (43, 16, -19), "6" (75, 16, -35), "8" (107, 16, -51), "10" (139, 32, -51).
    """
    torch.manual_seed(1)
    return (
        nn.Sequential(
            nn.Conv2d(3, 8, 7, stride=2, padding=1),
            nn.ReLU(),  # 0, 1: 8x22x22
            nn.MaxPool2d(3, stride=2, padding=1),  # 2: 8x11x11
            nn.Conv2d(8, 12, 5, stride=2, padding=2),
            nn.ReLU(),  # 3, 4: 12x6x6
            nn.MaxPool2d(3, stride=2, padding=1),  # 5: 12x3x3
            nn.Conv2d(12, 16, 3, padding=1),
            nn.ReLU(),  # 6, 7
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),  # 8, 9
            nn.MaxPool2d(3, stride=2),  # 10: 16x1x1
            nn.Flatten(),
            nn.Linear(16, 20),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(20, 10),  # 11-15
        )
        .double()
        .eval()
    )


@pytest.fixture
def zfnet() -> Arch:
    gen = torch.Generator().manual_seed(11)
    return Arch(zfnet_like(), randn(gen, 3, 3, 48, 48), {})


@pytest.fixture
def vgg_bn() -> Arch:
    """VGG-like with batch norm, in-place ReLUs and ceil_mode pools on odd sizes; 19x19 -> 10 classes."""
    gen = torch.Generator().manual_seed(12)
    torch.manual_seed(2)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            batch_norm(8, gen),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            batch_norm(8, gen),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # 10x10
            nn.Conv2d(8, 16, 3, padding=1),
            batch_norm(16, gen),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # 5x5
            nn.Conv2d(16, 16, 3, padding=1),
            batch_norm(16, gen),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),  # 2x2
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
        .double()
        .eval()
    )
    return Arch(model, randn(gen, 3, 3, 19, 19), {})


class TinyVGG(nn.Module):
    """Shaped like torchvision's VGG: features, avgpool, ``torch.flatten(x, 1)``, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Linear(8 * 3 * 3, 16),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(16, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@pytest.fixture
def tiny_vgg() -> Arch:
    gen = torch.Generator().manual_seed(13)
    torch.manual_seed(3)
    return Arch(TinyVGG().double().eval(), randn(gen, 2, 3, 20, 20), {"flatten": "<classifier"})


@pytest.fixture
def odd_convs() -> Arch:
    """Strided, dilated, grouped, non-square, padding='same' with even kernels, dilated max pool."""
    gen = torch.Generator().manual_seed(14)
    torch.manual_seed(4)
    model = (
        nn.Sequential(
            nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
            nn.ReLU(),  # 13x18
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
            nn.ReLU(),
            nn.Conv2d(8, 6, (4, 2), padding="same", groups=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1, dilation=2),  # 6x8
            nn.Conv2d(6, 6, 3, stride=3, groups=6),
            nn.ReLU(),  # 2x2
            nn.AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
        )
        .double()
        .eval()
    )
    return Arch(model, randn(gen, 2, 4, 25, 22), {})

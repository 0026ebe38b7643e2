"""``Mirror.blocks()``: per-block probe points, decided by structure, on timm's CNNs built small and on plain nets."""

from __future__ import annotations

import timm
import torch
import torchvision
from timm.models.convnext import ConvNeXt
from timm.models.densenet import DenseNet
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

import deconv


def blocks(model: nn.Module) -> list[str]:
    return deconv.build_mirror(model.eval()).blocks()


def test_timm_resnet_gives_its_blocks_and_not_its_pooling() -> None:
    model = ResNet(Bottleneck, (3, 4, 6, 3), channels=(8, 16, 24, 32), stem_width=8, num_classes=5)
    assert blocks(model) == [f"layer{i}.{j}" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)]


def test_timm_convnext_stages_give_their_blocks() -> None:
    model = ConvNeXt(depths=(2, 1, 3, 2), dims=(8, 16, 24, 32), num_classes=5)
    expected = ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1", *(f"stages.2.blocks.{j}" for j in range(3))]
    assert blocks(model) == [*expected, "stages.3.blocks.0", "stages.3.blocks.1"]  # no stem norm, downsample, head
    mirror = deconv.build_mirror(model)
    assert mirror.index("stages.3") == mirror.index("stages.3.blocks.1")  # the stage's output is its last block's
    assert mirror.index("stages.1") == mirror.index("stages.1.blocks.0")  # a stage of one block: the stage
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert mirror.project(images, layer="stages.1.blocks.0", channel=3).abs().sum() > 0


def test_timm_efficientnet_and_mobilenetv3_give_their_inverted_residuals() -> None:
    for name, depths in [("efficientnet_b0", (1, 2, 2, 3, 3, 4, 1)), ("mobilenetv3_small_050", (1, 2, 3, 2, 3, 1))]:
        model = timm.create_model(name, pretrained=False, num_classes=5)
        assert blocks(model) == [f"blocks.{i}.{j}" for i, n in enumerate(depths) for j in range(n)], name


def test_timm_regnet_stages_give_their_blocks_and_a_single_block_stage_stays() -> None:
    model = timm.create_model("regnetx_002", pretrained=False, num_classes=5)  # depths 1, 1, 4, 7
    assert blocks(model) == ["stem", "s1", "s2", *(f"s3.b{j}" for j in range(1, 5)), *(f"s4.b{j}" for j in range(1, 8))]


def test_densenet_layers_are_concatenated_not_chained_so_the_dense_blocks_stay() -> None:
    model = DenseNet(growth_rate=8, block_config=(2, 3, 2), num_classes=5)
    assert blocks(model) == [
        "features.denseblock1",
        "features.transition1",
        "features.denseblock2",
        "features.transition2",
        "features.denseblock3",
    ]  # no features.norm0 / norm5 (norms traced through) nor global_pool


def test_torchvision_answers_stay_and_its_stages_give_their_blocks() -> None:
    torch.manual_seed(0)
    assert blocks(torchvision.models.resnet18(weights=None)) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    regnet = blocks(torchvision.models.regnet_x_400mf(weights=None))  # AnyStage: a Sequential subclass of blocks
    assert regnet[:4] == ["stem", "trunk_output.block1", "trunk_output.block2.block2-0", "trunk_output.block2.block2-1"]
    convnext = blocks(torchvision.models.convnext_tiny(weights=None))
    assert convnext[0] == "features.0" and convnext[-1] == "features.7.2" and "features.2.0" not in convnext


class Unit(nn.Module):
    """conv + ReLU: no merge inside, so a run of them is a stem, not a chain of blocks."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(c, c, 3, padding=1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Residual(Unit):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) + x)


class Stage(nn.Module):
    def __init__(self, block: type[nn.Module], n: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(block(4) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 3, 1)  # a 1x1 conv on pooled features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x)).flatten(1)


def test_a_stage_of_residual_blocks_is_split_and_a_stage_of_plain_units_is_not() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Stage(Unit, 2), Stage(Residual, 3), Head())
    assert blocks(model) == ["1", "2.blocks.0", "2.blocks.1", "2.blocks.2"]  # the head is the model's output

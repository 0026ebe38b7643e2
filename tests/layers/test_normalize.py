"""LayerNorm and GroupNorm (modules, F. functions, timm-style LayerNorm2d over channels) under every rule, against
the oracle: the statistics constant under the deconvnet and guided rules, plain autograd under the gradient rule."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconv
from deconv.layers import Normalize


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of (N, C, H, W) maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GroupNormFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, 2, self.weight, self.bias, 1e-5)


NORMS = {
    "LayerNorm(C, H, W)": lambda: nn.LayerNorm([4, 7, 7]),
    "LayerNorm2d": lambda: LayerNorm2d(4),
    "GroupNorm": lambda: nn.GroupNorm(2, 4),
    "F.group_norm": GroupNormFunction,
    "LayerNorm(no affine)": lambda: nn.LayerNorm([4, 7, 7], elementwise_affine=False),
}


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("norm", list(NORMS))
def test_norms_match_their_oracle(norm: str, rule: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    layer = NORMS[norm]()
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 2), nn.ReLU())
    model = model.double().eval()
    images = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    modules = dict(model.named_modules())
    selections = oracle.selections_at(model, images, [n for n in mirror.layer_names if n in modules and n], 4, gen)
    expected = oracle.project(model, images, selections, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.3)
    assert any(isinstance(s.mirror_for(rule), Normalize) for s in mirror.steps)

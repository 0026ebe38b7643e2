"""Operations linear in their inputs (padding, upsampling, stacking, sums over dimensions) and softmax-weighted
sums (selective kernels, split attention) under every rule, against the oracle."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconv


class Functional(nn.Module):
    def __init__(self, f) -> None:  # noqa: ANN001
        super().__init__()
        self.a, self.b, self.f, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), f, nn.Conv2d(4, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.head(self.f(torch.relu(self.a(x)), self.b(x))))


def selective(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A selective-kernel block in small: branches stacked, weighted by a softmax over them, summed."""
    branches = torch.stack([a, b], dim=1)  # (N, 2, C, H, W)
    weights = torch.softmax(branches.sum(1).mean((2, 3), keepdim=True).unsqueeze(1).expand(-1, 2, -1, -1, -1), dim=1)
    return (branches * weights).sum(dim=1)


OPERATIONS = {
    "pad": lambda a, b: F.pad(a, (1, 2, 0, 1)),
    "reflect pad": lambda a, b: F.pad(a, (1, 1, 1, 1), mode="reflect"),
    "nearest": lambda a, b: F.interpolate(a, scale_factor=2),
    "bilinear": lambda a, b: F.interpolate(a, size=(9, 9), mode="bilinear", align_corners=False),
    "stack and sum": lambda a, b: torch.stack([a, b], 1).sum(1),
    "selective kernel": selective,
}


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_linear_operations_match_their_oracle(operation: str, rule: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = Functional(OPERATIONS[operation]).double().eval()
    images = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    selections = oracle.selections_at(model, images, ["a", "head"], 4, gen)
    expected = oracle.project(model, images, selections, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections, rule=rule), expected, min_nonzero=0.5)


@pytest.mark.parametrize(
    ("f", "words"),
    [
        (lambda a, b: torch.stack([a, b], 0).sum(0), "batch"),
        (lambda a, b: (a + b).sum(), "batch"),
        (lambda a, b: F.pad(a, (1, 1, 1, 1, 1, 1)) + F.pad(b, (1, 1, 1, 1, 1, 1)), "spatial"),
    ],
)
def test_operations_that_would_mix_images_are_refused(f, words: str) -> None:  # noqa: ANN001
    with pytest.raises(deconv.UnsupportedModuleError, match=words):
        deconv.build_mirror(Functional(f).eval())

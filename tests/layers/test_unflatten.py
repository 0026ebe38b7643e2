"""Unflatten: (N, C*H*W) -> (N, C, H, W), the shape the forward pass flattened."""

import torch
from torch import nn

import deconv
from deconv.layers import Unflatten


def test_unflatten_restores_the_flattened_layout() -> None:
    flatten = nn.Flatten()
    mirror = deconv.builders.find_mirror_factory(flatten)(flatten)
    assert isinstance(mirror, Unflatten)
    x = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    memory = mirror.remember(x, flatten(x))
    signal = torch.arange(24, dtype=torch.float64).view(2, 12)
    out = mirror(signal, *memory)
    assert out.shape == (2, 3, 2, 2)
    assert out[1, 1, 1, 1] == 12 + 7 and out[0, 2, 0, 1] == 9  # row-major: c * 4 + y * 2 + x


def test_unflatten_is_the_adjoint_of_flatten(gen: torch.Generator) -> None:
    flatten = nn.Flatten()
    mirror = Unflatten()
    x = torch.randn(3, 4, 5, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    back = mirror(y, *mirror.remember(x, flatten(x)))
    torch.testing.assert_close((flatten(x) * y).sum(), (x * back).sum(), rtol=1e-12, atol=0)

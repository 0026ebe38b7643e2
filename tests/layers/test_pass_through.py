"""PassThrough: Dropout, Dropout2d and Identity do nothing at inference, so their mirror does nothing."""

import pytest
import torch
from torch import nn

import deconv
from deconv.layers import PassThrough


@pytest.mark.parametrize("layer", [nn.Dropout(0.9), nn.Dropout2d(0.5), nn.Identity(), nn.Dropout(0.3, inplace=True)])
def test_pass_through_returns_the_signal_unchanged(layer: nn.Module, gen: torch.Generator) -> None:
    layer.train()  # even in training mode: the mirror is the inference-time identity
    mirror = deconv.builders.find_mirror_factory(layer)(layer)
    assert isinstance(mirror, PassThrough)
    signal = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    assert torch.equal(mirror(signal), signal)
    assert torch.equal(mirror(signal[:, :, 0, 0]), signal[:, :, 0, 0])

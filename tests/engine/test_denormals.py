"""The reverse pass flushes denormal numbers for its own arithmetic only: the caller's setting comes back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconv


def flushing() -> bool:
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@pytest.mark.parametrize("before", [False, True])
def test_a_projection_leaves_the_callers_denormal_setting_as_it_was(before: bool) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    mirror = deconv.build_mirror(model)
    images = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.set_flush_denormal(before)
    try:
        mirror.project(images, layer="2", channel=1)
        assert flushing() is before
    finally:
        torch.set_flush_denormal(False)


def test_signals_that_shrink_into_denormals_project_as_in_float64() -> None:
    """Two convolutions whose rims weigh 1e-20: the float32 projection's outer ring is 1e-40, denormal. It is
    zero; everything else equals the float64 projection."""
    chain = nn.Sequential(*(m for _ in range(2) for m in (nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.ReLU())))
    with torch.no_grad():
        for conv in chain[::2]:
            conv.weight.fill_(1e-20)[0, 0, 1, 1] = 1.0
    chain.eval()
    images = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(1)) + 0.5
    ours = deconv.build_mirror(chain).project(images, layer="3", channel=0, position=(4, 4))
    exact = deconv.build_mirror(chain.double()).project(images.double(), layer="3", channel=0, position=(4, 4))
    normal = exact.abs() >= torch.finfo(torch.float32).tiny
    assert 0 < int(normal.sum()) < int((exact != 0).sum())  # some of it is denormal in float32
    assert torch.allclose(ours.double()[normal], exact[normal], rtol=1e-6, atol=0)
    assert (ours[~normal] == 0).all() and not flushing()

"""TransposedAverage: each value spread back over its window with the weights the average used."""

import pytest
import torch
from torch import nn

import deconv
from deconv.layers import TransposedAverage

SIGNAL = torch.tensor([[[[4.0, 8.0], [12.0, 16.0]]]], dtype=torch.float64)

HAND = {
    # windows rows/cols {-1, 0} and {1, 2}: padding not counted -> divisors 1, 2, 2, 4
    "padded-exclusive": (nn.AvgPool2d(2, 2, padding=1, count_include_pad=False), 3, [[4, 4, 4], [6, 4, 4], [6, 4, 4]]),
    "padded-inclusive": (nn.AvgPool2d(2, 2, padding=1), 3, [[1, 2, 2], [3, 4, 4], [3, 4, 4]]),
    # ceil_mode: the last window holds only row/column 2, divided by what it holds
    "ceil": (nn.AvgPool2d(2, 2, ceil_mode=True), 3, [[1, 1, 4], [1, 1, 4], [6, 6, 16]]),
    "divisor-override": (
        nn.AvgPool2d(2, 2, divisor_override=2),
        4,
        [[2, 2, 4, 4], [2, 2, 4, 4], [6, 6, 8, 8], [6, 6, 8, 8]],
    ),
    # adaptive 3 -> 2: windows rows/cols {0, 1} and {1, 2}, each divided by 4, overlapping in the middle
    "adaptive": (nn.AdaptiveAvgPool2d(2), 3, [[1, 3, 2], [4, 10, 6], [3, 7, 4]]),
}


@pytest.mark.parametrize("pool, size, expected", HAND.values(), ids=HAND.keys())
def test_transposed_average_by_hand(pool: nn.Module, size: int, expected: list) -> None:
    mirror = deconv.builders.find_mirror_factory(pool)(pool)
    assert isinstance(mirror, TransposedAverage)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    assert pool(x).shape[-2:] == (2, 2)
    assert mirror(SIGNAL, *mirror.remember(x, pool(x)))[0, 0].tolist() == expected


def test_adaptive_average_that_upsamples_sums_back() -> None:
    """A 1x1 map averaged to 3x3 (VGG's avgpool on small images): all nine values come back to the pixel."""
    pool = nn.AdaptiveAvgPool2d(3)
    mirror = deconv.builders.find_mirror_factory(pool)(pool)
    x = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    signal = torch.arange(18, dtype=torch.float64).view(1, 2, 3, 3)
    assert mirror(signal, *mirror.remember(x, pool(x))).flatten().tolist() == [36.0, 117.0]


POOLS = {
    "overlapping-ceil-exclusive": (nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), (9, 8)),
    "non-square": (nn.AvgPool2d((2, 3), (1, 2), padding=(1, 1)), (7, 9)),
    "divisor-padded": (nn.AvgPool2d(3, 2, padding=1, divisor_override=5), (8, 7)),
    "divisor-ceil-exclusive": (
        nn.AvgPool2d((3, 2), (2, 3), padding=(1, 1), ceil_mode=True, count_include_pad=False, divisor_override=3),
        (10, 8),
    ),
    "ceil-inclusive": (nn.AvgPool2d(2, 3, padding=1, ceil_mode=True), (8, 10)),
    "adaptive-mixed": (nn.AdaptiveAvgPool2d((3, 5)), (7, 4)),
    "adaptive-none": (nn.AdaptiveAvgPool2d((None, 3)), (5, 7)),
    "adaptive-one": (nn.AdaptiveAvgPool2d(1), (5, 6)),
}


@pytest.mark.parametrize("pool, size", POOLS.values(), ids=POOLS.keys())
def test_transposed_average_is_the_adjoint(pool: nn.Module, size: tuple, gen: torch.Generator) -> None:
    mirror = deconv.builders.find_mirror_factory(pool)(pool)
    for _ in range(3):
        x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
        out = pool(x)
        y = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        back = mirror(y, *mirror.remember(x, out))
        assert back.shape == x.shape
        torch.testing.assert_close((out * y).sum(), (x * back).sum(), rtol=1e-12, atol=0)

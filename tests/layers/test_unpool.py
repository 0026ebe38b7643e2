"""Unpool2d: each value goes to the input position its pool window chose; overlapping choices add."""

import oracle
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconv
from deconv.layers import Unpool2d

# MaxPool2d(2, stride=1) on X: 9 windows; windows (0,0)/(0,1), (1,0)/(2,0) and (2,1)/(2,2) share their switch.
X = torch.tensor([[1, 9, 2, 3], [4, 5, 6, 8], [10, 7, 0, 11], [1, 2, 12, 3]], dtype=torch.float64)[None, None]
SWITCHES = [[1, 1, 7], [8, 9, 11], [8, 14, 14]]
SIGNAL = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
UNPOOLED = [[0, 1 + 2, 0, 0], [0, 0, 0, 3], [4 + 7, 5, 0, 6], [0, 0, 8 + 9, 0]]


def test_unpool_adds_where_windows_chose_the_same_position() -> None:
    pool = nn.MaxPool2d(2, stride=1)
    mirror = deconv.builders.find_mirror_factory(pool)(pool)
    assert isinstance(mirror, Unpool2d)
    switches, size = mirror.remember(X, pool(X))
    assert switches[0, 0].tolist() == SWITCHES and size == (4, 4)
    assert mirror(SIGNAL, switches, size)[0, 0].tolist() == UNPOOLED
    overwritten = F.max_unpool2d(SIGNAL, switches, 2, stride=1, output_size=(4, 4))
    assert overwritten[0, 0, 0, 1] in (1, 2) and overwritten[0, 0, 3, 2] in (8, 9)  # what the mirror must not do


def test_unpool_through_a_mirror_by_hand() -> None:
    """The same collisions through build_mirror: single activations and a whole map."""
    mirror = deconv.build_mirror(nn.Sequential(nn.MaxPool2d(2, stride=1)))
    singles = mirror.project_many(X, [(0, "0", 0, 0, 0), (0, "0", 0, 2, 2), (0, "0", 0, 1, 2)])
    expected = torch.zeros(3, 4, 4, dtype=torch.float64)
    expected[0, 0, 1], expected[1, 3, 2], expected[2, 2, 3] = 9, 12, 11
    assert torch.equal(singles[:, 0], expected)
    whole = mirror.project(X, layer="0", channel=0, position="map")  # pooled map [[9,9,8],[10,7,11],[10,12,12]]
    assert whole[0, 0].tolist() == [[0, 18, 0, 0], [0, 0, 0, 8], [20, 7, 0, 11], [0, 0, 24, 0]]


def test_the_oracle_sums_collisions_too() -> None:
    x = X.clone().requires_grad_(True)
    assert torch.autograd.grad(F.max_pool2d(x, 2, 1), x, SIGNAL)[0][0, 0].tolist() == UNPOOLED
    assert oracle.project(nn.Sequential(nn.MaxPool2d(2, stride=1)), X, [(0, "0", 0, 2, 1)])[0, 0, 3, 2] == 12


POOLS = {
    "overlapping": nn.MaxPool2d(3, stride=2),
    "stride-1": nn.MaxPool2d(2, stride=1),
    "padded": nn.MaxPool2d(3, stride=2, padding=1),
    "ceil": nn.MaxPool2d(2, stride=2, ceil_mode=True),
    "ceil-padded-overlapping": nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    "dilated": nn.MaxPool2d(2, stride=1, dilation=2),
    "non-square": nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 1), dilation=(1, 2)),
    "adaptive": nn.AdaptiveMaxPool2d((3, 2)),
    "adaptive-square": nn.AdaptiveMaxPool2d(4),
    "adaptive-none": nn.AdaptiveMaxPool2d((None, 3)),  # None keeps that axis, as for AdaptiveAvgPool2d
}


@pytest.mark.parametrize("pool", POOLS.values(), ids=POOLS.keys())
def test_unpool_is_the_adjoint_of_selecting_the_switches(pool: nn.Module, gen: torch.Generator) -> None:
    """With the switches fixed, pooling is a selection matrix S; the mirror is S^T (so collisions add)."""
    mirror = deconv.builders.find_mirror_factory(pool)(pool)
    z = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64)
    pooled, switches = (
        F.adaptive_max_pool2d(z, pool.output_size, return_indices=True)
        if isinstance(pool, nn.AdaptiveMaxPool2d)
        else F.max_pool2d(
            z, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, return_indices=True
        )
    )
    memory = mirror.remember(z, pool(z))
    assert torch.equal(memory[0], switches)
    for _ in range(3):
        x = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        y = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
        selected = x.flatten(2).gather(2, switches.flatten(2)).view_as(y)
        back = mirror(y, *memory)
        assert back.shape == x.shape
        torch.testing.assert_close((selected * y).sum(), (x * back).sum(), rtol=1e-12, atol=0)
    # and it equals torch's own max-pool backward
    zz = z.clone().requires_grad_(True)
    torch.testing.assert_close(mirror(y, *memory), torch.autograd.grad(pool(zz), zz, y)[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "pool",
    [p for p in POOLS.values() if isinstance(p, nn.MaxPool2d)] + [nn.MaxPool2d(16, 3, padding=2)],
    ids=[k for k, p in POOLS.items() if isinstance(p, nn.MaxPool2d)] + ["kernel-256"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_compact_memory_unpools_like_torch_backward(
    pool: nn.MaxPool2d, channels_last: bool, gen: torch.Generator
) -> None:
    """The 1-byte taps the forward walk keeps instead of switches: same pooled output, same unpooling."""
    mirror = deconv.builders.find_mirror_factory(pool)(pool)
    z = torch.randn(2, 3, 19, 18, generator=gen, dtype=torch.float64)
    pooled, memory = mirror.remember_forward(z)
    assert torch.equal(pooled, pool(z))
    y = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    zz = z.clone().requires_grad_(True)
    torch.testing.assert_close(mirror(y, *memory), torch.autograd.grad(pool(zz), zz, y)[0], rtol=1e-12, atol=0)

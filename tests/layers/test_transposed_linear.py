"""TransposedLinear: signal @ W with the layer's own weight, no bias."""

import torch
from torch import nn

import deconv
from deconv.layers import TransposedLinear


def test_transposed_linear_by_hand() -> None:
    linear = nn.Linear(3, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        linear.bias.fill_(100.0)
    mirror = TransposedLinear(linear)
    assert mirror.weight is linear.weight
    out = mirror(torch.tensor([[2.0, 1.0], [0.0, -1.0]], dtype=torch.float64))
    assert out.tolist() == [[6.0, 9.0, 12.0], [-4.0, -5.0, -6.0]]


def test_transposed_linear_is_the_adjoint(gen: torch.Generator) -> None:
    linear = nn.Linear(7, 5).double()
    mirror = deconv.builders.find_mirror_factory(linear)(linear)
    for _ in range(3):
        x = torch.randn(4, 7, generator=gen, dtype=torch.float64)
        y = torch.randn(4, 5, generator=gen, dtype=torch.float64)
        left = ((linear(x) - linear.bias) * y).sum()
        right = (x * mirror(y, *mirror.remember(x, linear(x)))).sum()
        torch.testing.assert_close(left, right, rtol=1e-12, atol=0)

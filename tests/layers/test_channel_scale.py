"""ChannelScale: channel c times weight[c] / sqrt(running_var[c] + eps); mean and bias are a shift."""

import torch
from conftest import batch_norm
from torch import nn

import deconv
from deconv.layers import ChannelScale


def test_channel_scale_by_hand() -> None:
    bn = nn.BatchNorm2d(2, eps=1.0).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -1.0]))
        bn.bias.copy_(torch.tensor([10.0, 20.0]))
        bn.running_mean.copy_(torch.tensor([5.0, -7.0]))
        bn.running_var.copy_(torch.tensor([3.0, 15.0]))
    mirror = deconv.builders.find_mirror_factory(bn)(bn)
    assert isinstance(mirror, ChannelScale)
    out = mirror(torch.ones(1, 2, 2, 2, dtype=torch.float64))
    assert out[0, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]  # 2 / sqrt(3 + 1)
    assert out[0, 1].tolist() == [[-0.25, -0.25], [-0.25, -0.25]]  # -1 / sqrt(15 + 1)


def test_channel_scale_without_affine_and_with_live_statistics() -> None:
    bn = nn.BatchNorm2d(1, eps=0.0, affine=False).double()
    mirror = ChannelScale(bn)
    with torch.no_grad():
        bn.running_var.fill_(4.0)
    assert mirror(torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)).item() == 1.5
    with torch.no_grad():
        bn.running_var.fill_(0.25)  # read at every call, never copied
    assert mirror(torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)).item() == 6.0
    assert list(mirror.parameters()) == [] and list(mirror.buffers()) == []


def test_channel_scale_is_the_adjoint_of_eval_batch_norm(gen: torch.Generator) -> None:
    bn = batch_norm(5, gen).double().eval()
    mirror = ChannelScale(bn)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    linear = bn(x) - bn(torch.zeros_like(x))
    torch.testing.assert_close((linear * y).sum(), (x * mirror(y)).sum(), rtol=1e-12, atol=0)

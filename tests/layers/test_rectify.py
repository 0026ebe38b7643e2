"""Rectify: R_{l-1} = max(R_l, 0), whatever the forward pass did (the worked example in the seeds)."""

import oracle
import torch
from torch import nn

import deconv
from deconv.layers import Rectify

X = torch.tensor([[[[1.0, -2.0], [-4.0, 5.0]]]], dtype=torch.float64)  # forward input
R = torch.tensor([[[[-2.0, -2.0], [4.0, 8.0]]]], dtype=torch.float64)  # reconstruction arriving from above
DECONV = torch.tensor([[[[0.0, 0.0], [4.0, 8.0]]]], dtype=torch.float64)
SALIENCY = torch.tensor([[[[-2.0, 0.0], [0.0, 8.0]]]], dtype=torch.float64)  # plain backprop: R * (x > 0)


def test_rectify_passes_the_positive_part_of_the_signal() -> None:
    mirror = deconv.builders.find_mirror_factory(nn.ReLU())(nn.ReLU())
    assert isinstance(mirror, Rectify)
    assert mirror.remember(X, X.clamp(min=0)) == ()  # the forward pass is not consulted
    assert torch.equal(mirror(R), DECONV)


def test_the_oracle_rectifies_the_gradient_not_the_forward_mask() -> None:
    x = X.clone().requires_grad_(True)
    relu = nn.Sequential(nn.ReLU(inplace=True))
    assert torch.equal(torch.autograd.grad(relu(x.clone()), x, R)[0], SALIENCY)
    with oracle.deconv_mode(relu) as mode:
        y = relu(x.clone())
    assert mode.calls == 1
    assert torch.equal(torch.autograd.grad(y, x, R)[0], DECONV)


def test_rectify_keeps_shape_and_zeroes_exactly() -> None:
    signal = torch.tensor([[-1e-300, 0.0, 3.5, -7.0]], dtype=torch.float64)
    out = Rectify()(signal)
    assert out.shape == signal.shape and out.tolist() == [[0.0, 0.0, 3.5, 0.0]]

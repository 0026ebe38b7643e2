"""Pointwise activations other than the ReLU (ReLU6, LeakyReLU, PReLU, ELU, SiLU, GELU, Mish, Hardswish, Hardtanh),
as modules and as functions, under every rule, against the oracle with those backward definitions (float64)."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconv
from deconv.layers import ActivationGradient

MODULES = [
    nn.ReLU6(),
    nn.LeakyReLU(0.1),
    nn.PReLU(4),
    nn.ELU(),
    nn.SiLU(),
    nn.GELU(),
    nn.GELU("tanh"),
    nn.Mish(),
    nn.Hardswish(),
    nn.Hardtanh(-0.5, 2.0),
    nn.SiLU(inplace=True),
]
FUNCTIONS = [F.relu6, F.silu, F.gelu, F.mish, F.hardswish, F.elu, lambda x: F.leaky_relu(x, 0.2)]


class Functional(nn.Module):
    def __init__(self, f) -> None:  # noqa: ANN001
        super().__init__()
        self.conv, self.f, self.pool, self.head = nn.Conv2d(3, 4, 3), f, nn.MaxPool2d(2), nn.Conv2d(4, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.f(self.conv(x))))


def _check(model: nn.Module, rule: str, gen: torch.Generator) -> deconv.Mirror:
    model = model.double().eval()
    images = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    modules = dict(model.named_modules())
    layers = [n for n in mirror.layer_names if n in modules and n]
    selections = oracle.selections_at(model, images, layers, 4, gen)
    expected = oracle.project(model, images, selections, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.3)
    return mirror


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("activation", MODULES, ids=lambda m: repr(m))
def test_activation_modules_match_their_oracle(activation: nn.Module, rule: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), activation, nn.MaxPool2d(2), nn.Conv2d(4, 3, 2), nn.ReLU())
    mirror = _check(model, rule, gen)
    kind = deconv.layers.Rectify if rule == "deconvnet" else ActivationGradient
    assert isinstance(mirror.steps[1].mirror, kind)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("f", FUNCTIONS, ids=lambda f: getattr(f, "__name__", "leaky_relu"))
def test_activation_functions_match_their_oracle(f, rule: str, gen: torch.Generator) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    _check(Functional(f), rule, gen)


def test_the_gradient_rule_is_the_plain_input_gradient(gen: torch.Generator) -> None:
    """Under the gradient rule a network of these activations is projected by plain autograd's vector-Jacobian
    product: no oracle rule at all."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(5))
    images = torch.randn(1, 3, 9, 9, generator=gen, dtype=torch.float64)
    model(images.float())
    model = model.double().eval()
    x = images.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[0, 2], x)
    projection = deconv.build_mirror(model, rule="gradient").project(images, target_class=2)
    torch.testing.assert_close(projection, grad * out[0, 2].detach(), rtol=1e-10, atol=1e-13)


def test_an_activation_mirror_keeps_the_models_parameters_its_own() -> None:
    prelu = nn.PReLU(4)
    mirror = deconv.build_mirror(nn.Sequential(nn.Conv2d(3, 4, 3), prelu), rule="guided")
    assert not list(mirror.steps[1].mirror_for("guided").parameters())

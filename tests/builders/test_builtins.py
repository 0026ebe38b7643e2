"""The built-in mirrors: every registered torch layer against the oracle, and the configurations they refuse."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from conftest import batch_norm
from torch import nn

import deconv
from deconv import layers

BUILTIN = [t for t in deconv.registered_types() if isinstance(t, type) and t.__module__.startswith("torch.nn")]

# type -> (model around one such layer, input size (C, H, W), expected mirror type)
EXAMPLES = {
    nn.Conv2d: (
        lambda g: nn.Sequential(nn.Conv2d(2, 4, (3, 2), stride=2, padding=1, dilation=(1, 2))),
        (2, 9, 9),
        layers.TransposedFilter,
    ),
    nn.ReLU: (lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()), (2, 6, 6), layers.Rectify),
    nn.MaxPool2d: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (2, 10, 9),
        layers.Unpool2d,
    ),
    nn.AdaptiveMaxPool2d: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AdaptiveMaxPool2d((3, 2))),
        (2, 9, 8),
        layers.Unpool2d,
    ),
    nn.AvgPool2d: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
        (2, 10, 9),
        layers.TransposedAverage,
    ),
    nn.AdaptiveAvgPool2d: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AdaptiveAvgPool2d((4, 3))),
        (2, 7, 8),
        layers.TransposedAverage,
    ),
    nn.Linear: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(27, 5)),
        (2, 5, 5),
        layers.TransposedLinear,
    ),
    nn.Flatten: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(27, 5)),
        (2, 5, 5),
        layers.Unflatten,
    ),
    nn.Conv1d: (
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), Eca(nn.Conv1d(1, 1, 3, padding=1))),
        (2, 6, 6),
        layers.TransposedFilter1d,
    ),
    nn.BatchNorm2d: (lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), batch_norm(3, g)), (2, 6, 6), layers.ChannelScale),
    nn.Dropout: (lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Dropout(0.9)), (2, 6, 6), layers.PassThrough),
    nn.Dropout2d: (lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Dropout2d(0.9)), (2, 6, 6), layers.PassThrough),
    nn.Identity: (lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Identity()), (2, 6, 6), layers.PassThrough),
    nn.LayerNorm: (lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), nn.LayerNorm([3, 4, 4])), (2, 6, 6), layers.Normalize),
    **{
        kind: (lambda g, make=make: nn.Sequential(nn.Conv2d(2, 3, 3), make()), (2, 6, 6), layers.LinearTranspose)
        for kind, make in {
            nn.Upsample: lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.UpsamplingNearest2d: lambda: nn.UpsamplingNearest2d(scale_factor=2),
            nn.UpsamplingBilinear2d: lambda: nn.UpsamplingBilinear2d(scale_factor=2),
            nn.ZeroPad2d: lambda: nn.ZeroPad2d((1, 2, 0, 1)),
            nn.ConstantPad2d: lambda: nn.ConstantPad2d(1, -0.5),
            nn.ReflectionPad2d: lambda: nn.ReflectionPad2d(1),
            nn.ReplicationPad2d: lambda: nn.ReplicationPad2d((2, 0, 1, 1)),
        }.items()
    },
    nn.InstanceNorm2d: (  # running statistics: linear (the instance statistics: test_an_instance_norm_...)
        lambda g: nn.Sequential(nn.Conv2d(2, 3, 3), instance_norm(3, g)),
        (2, 6, 6),
        layers.ChannelScale,
    ),
    nn.GroupNorm: (lambda g: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4)), (2, 6, 6), layers.Normalize),
    **{
        kind: (lambda g, make=make: nn.Sequential(nn.Conv2d(2, 3, 3), make()), (2, 6, 6), layers.Rectify)
        for kind, make in {
            nn.ReLU6: nn.ReLU6,
            nn.LeakyReLU: lambda: nn.LeakyReLU(0.2),
            nn.PReLU: lambda: nn.PReLU(3),
            nn.ELU: nn.ELU,
            nn.SiLU: nn.SiLU,
            nn.GELU: nn.GELU,
            nn.Mish: nn.Mish,
            nn.Hardswish: nn.Hardswish,
            nn.Hardtanh: lambda: nn.Hardtanh(-0.5, 1.5),
        }.items()
    },
    **{
        kind: (lambda g, make=make: nn.Sequential(nn.Conv2d(2, 3, 3), Gate(make())), (2, 6, 6), layers.Ungated)
        for kind, make in {
            nn.Sigmoid: nn.Sigmoid,
            nn.Hardsigmoid: nn.Hardsigmoid,
            nn.Tanh: nn.Tanh,
            nn.Softmax: lambda: nn.Softmax(1),
        }.items()
    },
}


class Gate(nn.Module):
    """Squeeze-excite in small: the input times a gate computed from its pooled channels."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.squeeze, self.gate = nn.Conv2d(3, 3, 1), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.squeeze(x.mean((2, 3), keepdim=True)))


def instance_norm(c: int, gen: torch.Generator) -> nn.InstanceNorm2d:
    norm = nn.InstanceNorm2d(c, affine=True, track_running_stats=True)
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2.0, generator=gen)
        norm.running_mean.normal_(0.0, 0.5, generator=gen)
        norm.weight.uniform_(-1.5, 1.5, generator=gen)
    return norm


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_an_instance_norm_is_a_group_norm_of_one_channel_per_group(rule: str, gen: torch.Generator) -> None:
    """InstanceNorm2d with the instance's statistics against the oracle of the same model with GroupNorm(C, C), which
    computes the same (the oracle takes the group norm's statistics as constants under the deconvnet and guided
    rules)."""
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(4, affine=True)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), norm, nn.SiLU(), nn.Conv2d(4, 3, 3), nn.ReLU()).double().eval()
    with torch.no_grad():
        norm.weight.uniform_(-1.5, 1.5, generator=gen)
        norm.bias.normal_(0.0, 0.5, generator=gen)
    grouped = nn.GroupNorm(4, 4, eps=norm.eps).double()
    grouped.weight, grouped.bias = norm.weight, norm.bias
    reference = nn.Sequential(model[0], grouped, *model[2:]).eval()
    images = torch.randn(3, 2, 9, 9, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(model(images), reference(images), rtol=1e-12, atol=1e-12)
    mirror = deconv.build_mirror(model, rule=rule)
    assert isinstance(mirror.steps[1].mirror, layers.Normalize)
    selections = oracle.selections_at(reference, images, ["1", "2", "4"], 4, gen)
    expected = oracle.project(reference, images, selections, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.8)


class Eca(nn.Module):
    """timm's ECA gate in small: the input times a sigmoid of a 1-D convolution across its pooled channels."""

    def __init__(self, conv: nn.Module, detached: bool = False) -> None:
        super().__init__()
        self.conv, self.detached = conv, detached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        gate = torch.sigmoid(y)
        return x * (gate.detach() if self.detached else gate).view(x.shape[0], -1, 1, 1).expand_as(x)


class FunctionalConv1d(nn.Module):
    """``F.conv1d`` with the module's own filters."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 1, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, padding=2)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("conv", [nn.Conv1d(1, 1, 3, padding=1), FunctionalConv1d()], ids=["Conv1d", "F.conv1d"])
def test_an_eca_gate_matches_the_oracle_under_every_rule(conv: nn.Module, rule: str, gen: torch.Generator) -> None:
    """The 1-D convolution sits in the gate's branch: under the gradient rule the signal goes through it (its exact
    transpose); under the deconvnet and guided rules the branch carries none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), Eca(conv), nn.Conv2d(6, 3, 3), nn.ReLU()).double().eval()
    images = torch.randn(3, 2, 9, 9, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    assert sum(isinstance(s.mirror, layers.TransposedFilter1d) for s in mirror.steps) == 1
    selections = oracle.selections_at(model, images, ["1", "2", "4"], 4, gen)
    expected = oracle.project(model, images, selections, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.8)
    if rule == "gradient":  # the gate's branch carries a share of the gradient
        model[2].detached = True
        without = oracle.project(model, images, selections, rule=rule)
        assert (expected - without).abs().amax() > 1e-3 * expected.abs().amax()


def test_every_builtin_has_an_example() -> None:
    assert set(BUILTIN) == set(EXAMPLES)


@pytest.mark.parametrize("kind", BUILTIN, ids=lambda t: t.__name__)
def test_builtin_mirror_matches_the_oracle(kind: type, gen: torch.Generator) -> None:
    make, shape, mirror_type = EXAMPLES[kind]
    torch.manual_seed(0)
    model = nn.Sequential(*make(gen), nn.ReLU()).double().eval()  # a ReLU on top: positive selections below it too
    mirror = deconv.build_mirror(model)
    assert any(type(s.layer) is kind and type(s.mirror) is mirror_type for s in mirror.steps)
    images = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    modules = dict(model.named_modules())  # the oracle taps modules; a gate's branch carries no signal to project
    probes = [
        n
        for n in mirror.layer_names
        if n in modules and (mirror_type not in (layers.Ungated, layers.TransposedFilter1d) or "." not in n)
    ]
    selections = oracle.selections_at(model, images, probes, 5, gen)
    oracle.assert_matches(
        mirror.project_many(images, selections), oracle.project(model, images, selections), min_nonzero=0.8
    )


def test_weighted_mirrors_share_their_weights() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))
    mirror = deconv.build_mirror(model)
    for step in mirror.steps:
        if isinstance(step.layer, (nn.Conv2d, nn.Linear)):
            assert step.mirror.weight is step.layer.weight
    assert sum(isinstance(s.mirror, (layers.TransposedFilter, layers.TransposedLinear)) for s in mirror.steps) == 3


@pytest.mark.parametrize(
    "layer, words",
    [
        (nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), ["'1'", "padding_mode='reflect'", "zeros"]),
        (nn.BatchNorm2d(3, track_running_stats=False), ["'1'", "BatchNorm2d", "track_running_stats=False"]),
        (nn.Flatten(2), ["'1'", "start_dim=2", "start_dim=1"]),
    ],
)
def test_configurations_that_cannot_be_mirrored_are_named(layer: nn.Module, words: list[str]) -> None:
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(nn.Sequential(nn.Conv2d(3, 3, 1), layer))
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


class DividedByComputed(nn.Module):
    """A division by a tensor computed from a parameter in the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.gain.sum()


def test_a_division_by_a_computed_tensor_is_refused_by_name() -> None:
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(nn.Sequential(nn.Conv2d(3, 3, 1), DividedByComputed()))
    message = str(error.value)
    assert "\n" not in message and "'truediv'" in message and "number, parameter or buffer" in message, message


def test_a_model_with_nothing_to_mirror_is_refused() -> None:
    with pytest.raises(deconv.UnsupportedModuleError, match="Sequential"):
        deconv.build_mirror(nn.Sequential())


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_a_gates_own_branch_cannot_be_projected_under_the_rectifying_rules(rule: str) -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), Gate(nn.Sigmoid())).double().eval()
    images = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    assert mirror.project(images, layer="1", channel=0).shape == images.shape  # through the gate: fine
    with pytest.raises(deconv.UnsupportedModuleError, match=r"^Sigmoid is reached by the signal outside a gate"):
        mirror.project(images, layer="1.gate", channel=0)
    projection = deconv.build_mirror(model, rule="gradient").project(images, layer="1.gate", channel=0)
    assert projection.abs().sum() > 0  # the gradient rule mirrors the branch as it is

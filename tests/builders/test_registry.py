"""register_mirror / unregister_mirror / find_mirror_factory: users extend the registry the way the built-ins do."""

from __future__ import annotations

from typing import Iterator

import oracle
import pytest
import torch
from torch import nn

import deconv
from deconv.builders import find_mirror_factory
from deconv.layers import MirrorModule, TransposedFilter


class Scale(nn.Module):
    """A custom leaf layer: multiplies by a fixed factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class DoubleScale(Scale):
    pass


class ScaleMirror(MirrorModule):
    def __init__(self, scale: Scale) -> None:
        super().__init__()
        self.factor = scale.factor

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return signal * self.factor


@pytest.fixture
def scale_registered() -> Iterator[list]:
    """Scale has a mirror for the test's duration; ``built`` lists the modules the factory was called with."""
    built: list = []

    @deconv.register_mirror(Scale)
    def _(module: Scale) -> ScaleMirror:
        built.append(module)
        return ScaleMirror(module)

    yield built
    deconv.unregister_mirror(Scale)


def model_with(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Conv2d(2, 4, 3), layer, nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 2), nn.ReLU())
        .double()
        .eval()
    )


def assert_oracle(model: nn.Module, gen: torch.Generator) -> deconv.Mirror:
    images = torch.randn(2, 2, 10, 10, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    modules = dict(model.named_modules())  # the oracle taps modules; a traced function is checked from its module
    selections = oracle.selections_at(model, images, [n for n in mirror.layer_names if n in modules], 4, gen)
    oracle.assert_matches(mirror.project_many(images, selections), oracle.project(model, images, selections))
    return mirror


class Erf(nn.Module):
    """A custom leaf layer computing an operation deconv has no mirror for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erf(x)


def test_an_unregistered_leaf_module_is_traced_and_its_operation_named_with_how_to_register_it(
    gen: torch.Generator,
) -> None:
    assert_oracle(model_with(Scale(-2.0)), gen)  # x * -2: traced through, mirrored as a product with a constant
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(model_with(Erf()))
    message = str(error.value)
    assert isinstance(error.value, TypeError)
    assert "\n" not in message and "module '1'" in message and "Erf" in message and "erf" in message, message
    assert "register_mirror" in message, message


@pytest.mark.parametrize("layer", [nn.Softmax2d(), nn.Tanh(), nn.Softplus(), nn.ConvTranspose2d(4, 4, 1)])
def test_unsupported_torch_layers_are_named(layer: nn.Module) -> None:
    with pytest.raises(TypeError) as error:
        deconv.build_mirror(model_with(layer))
    message = str(error.value)
    assert isinstance(error.value, deconv.UnsupportedModuleError)
    assert (
        "\n" not in message and "'1'" in message and type(layer).__name__ in message and "register_mirror" in message
    ), message


def test_a_registered_mirror_is_used(scale_registered: list, gen: torch.Generator) -> None:
    model = model_with(Scale(-2.0))
    mirror = assert_oracle(model, gen)
    assert scale_registered == [model[1]]
    assert isinstance(mirror.steps[1].mirror, ScaleMirror)
    assert Scale in deconv.registered_types()


def test_plain_subclasses_match_and_ones_that_override_forward_are_traced_through(
    scale_registered: list, gen: torch.Generator
) -> None:
    """A subclass that only adds nothing (DoubleScale) gets its registered class's mirror; one that overrides
    forward (MyConv) computes what its forward says, so the walk traces it, here into F.conv2d."""

    class MyConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    torch.manual_seed(1)
    model = (
        nn.Sequential(MyConv(2, 4, 3, stride=2, padding=1), DoubleScale(0.5), nn.ReLU(), MyConv(4, 3, 3))
        .double()
        .eval()
    )
    mirror = assert_oracle(model, gen)
    assert isinstance(mirror.steps[0].mirror, TransposedFilter) and mirror.steps[0].mirror.weight is model[0].weight
    assert mirror.index("0") == 0 and isinstance(mirror.steps[1].mirror, ScaleMirror)
    assert find_mirror_factory(model[1]) is find_mirror_factory(Scale(1.0))
    assert find_mirror_factory(model[0]) is None and find_mirror_factory(nn.Conv2d(1, 1, 1)) is not None


class BatchNormReLU(nn.BatchNorm2d):
    """The issue's smallest repro: a batch norm subclass whose forward also rectifies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(super().forward(x))


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in small: evaluation-mode F.batch_norm, then a ReLU module."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return self.act(x)


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (timm's StdConv2d): filters computed in the forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_a_batch_norm_subclass_with_an_activation_is_mirrored_exactly(gen: torch.Generator) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), BatchNormAct(4), nn.MaxPool2d(2), nn.Conv2d(4, 3, 2), nn.ReLU())
    model = model.double().eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(-1.0, 1.0)
    mirror = assert_oracle(model, gen)  # the ReLU inside is rectified going down
    assert [type(s.mirror).__name__ for s in mirror.steps[:3]] == ["TransposedFilter", "ChannelScale", "Rectify"]


class ImageFilteredConv(nn.Conv2d):
    """A convolution whose filters are computed from the images (of a batch of 4): not linear in its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight * x[:, :4, :1, :1].reshape(4, 4, 1, 1), self.bias)


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (BatchNormReLU(4), ["module '1'", "BatchNormReLU", "test_registry.py:", "control flow"]),
        (
            ImageFilteredConv(4, 4, 1),
            ["in module '1'", "ImageFilteredConv", "conv2d", "filters computed from the images"],
        ),
    ],
)
def test_subclasses_that_compute_otherwise_are_never_mirrored_as_their_base(layer: nn.Module, words: list) -> None:
    """Before, both were accepted as a plain BatchNorm2d / Conv2d: wrong projections without an error."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Conv2d(4, 2, 3)).double().eval()
    with pytest.raises(TypeError) as error:
        deconv.build_mirror(model)
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_a_weight_standardised_conv_is_its_transpose_with_the_standardised_filters(
    rule: str, gen: torch.Generator
) -> None:
    """The filters are computed from the parameters alone, so the convolution is linear in its input."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), StandardisedConv(4, 4, 3, padding=1), nn.ReLU(), StandardisedConv(4, 3, 2)
    )
    model = model.double().eval()
    images = torch.randn(2, 2, 10, 10, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    selections = oracle.selections_at(model, images, ["0", "1", "2", "3"], 4, gen)
    oracle.assert_matches(mirror.project_many(images, selections), oracle.project(model, images, selections, rule=rule))


def test_standardised_filters_follow_their_parameters_as_they_change(gen: torch.Generator) -> None:
    """The mirror holds no copy of the filters: a weight changed in place after build_mirror is the one a new forward
    pass uses; a trace keeps the filters of its own forward pass, as it keeps its switches."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), StandardisedConv(4, 3, 3)).double().eval()
    images = torch.randn(2, 2, 9, 9, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    selections = [(0, "2", 1, 2, 3), (1, "2", 0, 4, 1), (1, "2", 2, 0, 0)]
    trace = mirror.trace(images)
    before = mirror.project_many(images, selections)
    with torch.no_grad():
        model[2].weight.mul_(torch.rand_like(model[2].weight))
    after = mirror.project_many(images, selections)
    assert (after - before).abs().amax() > 1e-3 * before.abs().amax()
    oracle.assert_matches(after, oracle.project(model, images, selections), min_nonzero=1.0)
    torch.testing.assert_close(mirror.project_many(images, selections, trace=trace), before, rtol=0, atol=0)
    step = mirror.steps[mirror.index("conv2d")].mirror  # called on its own, it computes them from the parameters
    x = torch.randn(1, 4, 7, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 3, 5, 5, generator=gen, dtype=torch.float64)
    w = model[2].weight
    w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
    expected = torch.nn.functional.conv_transpose2d(y, w)
    torch.testing.assert_close(step(y, *step.remember(x, y)), expected, rtol=1e-12, atol=1e-12)


class SelectSeq(nn.Module):
    """selecsls's SelectSeq: no parameters, no children; picks one tensor of a list."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.pick = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 1), SelectSeq(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pick([self.a(x), self.b(x)]))


def test_a_leaf_that_only_selects_from_a_list_is_traced_through(gen: torch.Generator) -> None:
    torch.manual_seed(3)
    assert_oracle(nn.Sequential(Pair(), nn.Conv2d(3, 2, 3)).double().eval(), gen)


def test_registering_a_type_twice_needs_override(scale_registered: list) -> None:
    with pytest.raises(ValueError, match="Scale.*override=True"):
        deconv.register_mirror(Scale)(lambda m: ScaleMirror(m))

    @deconv.register_mirror(Scale, override=True)
    def replacement(module: Scale) -> nn.Module:
        return deconv.layers.PassThrough()

    assert find_mirror_factory(Scale(1.0)) is replacement
    assert isinstance(deconv.build_mirror(model_with(Scale(3.0))).steps[1].mirror, deconv.layers.PassThrough)


def test_a_failed_registration_changes_nothing() -> None:
    """Both types are checked before either is registered."""
    before = deconv.registered_types()
    with pytest.raises(ValueError, match="Conv2d"):
        deconv.register_mirror(Scale, nn.Conv2d)(lambda m: ScaleMirror(m))
    assert deconv.registered_types() == before and find_mirror_factory(Scale(1.0)) is None


def test_register_and_unregister_reject_bad_arguments() -> None:
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        deconv.register_mirror(int)
    with pytest.raises(TypeError):
        deconv.register_mirror()
    with pytest.raises(KeyError):
        deconv.unregister_mirror(Scale)

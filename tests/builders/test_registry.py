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
    selections = oracle.selections_at(model, images, mirror.layer_names, 4, gen)
    oracle.assert_matches(mirror.project_many(images, selections), oracle.project(model, images, selections))
    return mirror


def test_an_unregistered_leaf_module_is_named_with_how_to_register_it() -> None:
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(model_with(Scale(-2.0)))
    message = str(error.value)
    assert isinstance(error.value, TypeError)
    assert "\n" not in message and "'1'" in message and "Scale" in message and "register_mirror" in message, message


@pytest.mark.parametrize("layer", [nn.GELU(), nn.Softmax2d(), nn.Tanh(), nn.Conv1d(4, 4, 1)])
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


def test_subclasses_are_found_through_the_mro(scale_registered: list, gen: torch.Generator) -> None:
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
    assert isinstance(mirror.steps[1].mirror, ScaleMirror)
    assert find_mirror_factory(model[0]) is find_mirror_factory(nn.Conv2d(1, 1, 1))


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

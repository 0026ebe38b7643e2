"""The walk: nested Sequentials, functional calls, in-place and reused ReLUs, torchvision-style
models, a residual block; each checked against the oracle at every layer. Containers whose output is a
node are probe points too; untraceable forward passes and operations with no mirror are refused."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from oracle import Call
from torch import nn

import deconv


def every_layer(
    model: nn.Module, images: torch.Tensor, gen: torch.Generator, taps: dict | None = None
) -> deconv.Mirror:
    """Asserts that every layer's projections match the oracle; returns the mirror."""
    mirror = deconv.build_mirror(model)
    selections = oracle.selections_at(model, images, mirror.layer_names, 4, gen, taps)
    assert {s[1] for s in selections} == set(mirror.layer_names)
    oracle.assert_matches(
        mirror.project_many(images, selections), oracle.project(model, images, selections, taps), min_nonzero=0.8
    )
    return mirror


def images(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def test_nested_sequentials_keep_their_module_names(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU()),
            nn.Sequential(nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(5, 6, 3, padding=1)), nn.ReLU()),
            nn.Flatten(),
            nn.Linear(6 * 4 * 4, 7),
        )
        .double()
        .eval()
    )
    mirror = every_layer(model, images(gen, 3, 3, 11, 11), gen)
    assert mirror.layer_names == ["0.0", "0.1", "0", "1.0.0", "1.0.1", "1.0", "1.1", "1", "2", "3"]
    assert mirror.index("1") == mirror.index("1.1") and mirror.blocks() == []  # plain Sequentials are no blocks


def test_an_empty_sequential_is_no_layer(gen: torch.Generator) -> None:
    """An empty container (a configurable block switched off) passes its input on: nothing to mirror."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(), nn.ReLU(), nn.Sequential(nn.Sequential())).double().eval()
    )
    mirror = every_layer(model, images(gen, 2, 3, 7, 7), gen)
    assert mirror.layer_names == ["0", "2"]


class FunctionalA(nn.Module):
    """F.relu (also in place), F.max_pool2d with positional and keyword settings, x.view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 8, 3), nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x), inplace=True), kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class FunctionalB(nn.Module):
    """torch.relu, x.relu(), F.avg_pool2d, F.adaptive_max_pool2d, F.adaptive_avg_pool2d, torch.flatten, F.dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        x = F.adaptive_max_pool2d(x.relu(), 3)
        x = F.adaptive_avg_pool2d(x, (2, 2))
        x = torch.flatten(x, 1)
        x = F.dropout(x, 0.5, self.training)
        return F.relu(self.fc(x))


class ReusedReLU(nn.Module):
    """One in-place ReLU module called three times; x.reshape(x.shape[0], -1) and x.flatten(1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        x = self.relu(x)
        x = x.reshape(x.shape[0], -1).flatten(1)
        return self.relu(self.fc(x))


FUNCTIONAL = {
    "A": (
        FunctionalA,
        14,
        ["conv1", "relu", "max_pool2d", "conv2", "relu_1", "max_pool2d_1", "view", "fc"],
        {
            "relu": Call(F.relu),
            "max_pool2d": Call(F.max_pool2d),
            "relu_1": Call(F.relu, 1),
            "max_pool2d_1": Call(F.max_pool2d, 1),
            "view": Call(torch.Tensor.view),
        },
    ),
    "B": (
        FunctionalB,
        10,
        [
            "conv",
            "relu",
            "avg_pool2d",
            "relu_1",
            "adaptive_max_pool2d",
            "adaptive_avg_pool2d",
            "flatten",
            "dropout",
            "fc",
            "relu_2",
        ],
        {
            "relu": Call(torch.relu),
            "avg_pool2d": Call(F.avg_pool2d),
            "relu_1": Call(torch.Tensor.relu),
            "adaptive_max_pool2d": Call(F.adaptive_max_pool2d),
            "adaptive_avg_pool2d": Call(F.adaptive_avg_pool2d),
            "flatten": Call(torch.flatten),
            "dropout": Call(F.dropout),
            "relu_2": Call(F.relu),
        },
    ),
    "reused": (
        ReusedReLU,
        7,
        ["conv", "relu", "relu:1", "reshape", "flatten", "fc", "relu:2"],
        {"reshape": Call(torch.Tensor.reshape), "flatten": Call(torch.Tensor.flatten)},
    ),
}


@pytest.mark.parametrize("make, size, names, taps", FUNCTIONAL.values(), ids=FUNCTIONAL.keys())
def test_functional_calls_become_layers(make, size: int, names: list[str], taps: dict, gen: torch.Generator) -> None:
    torch.manual_seed(1)
    model = make().double().eval()
    mirror = every_layer(model, images(gen, 3, 3, size, size), gen, taps)
    assert mirror.layer_names == names


def test_functional_settings_are_kept() -> None:
    steps = {s.name: s.layer for s in deconv.build_mirror(FunctionalA()).steps}
    pool = steps["max_pool2d_1"]
    assert isinstance(pool, nn.MaxPool2d)
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 1, True)
    steps = {s.name: s.layer for s in deconv.build_mirror(FunctionalB()).steps}
    assert isinstance(steps["avg_pool2d"], nn.AvgPool2d) and steps["avg_pool2d"].count_include_pad is False
    mirrors = {s.name: s.mirror for s in deconv.build_mirror(FunctionalB()).steps}
    assert isinstance(mirrors["dropout"], deconv.layers.PassThrough) and isinstance(
        mirrors["flatten"], deconv.layers.Unflatten
    )


def test_reused_module_steps_share_the_module() -> None:
    model = ReusedReLU()
    steps = deconv.build_mirror(model).steps
    assert [s.layer for s in steps if s.name.startswith("relu")] == [model.relu] * 3


def test_in_place_relus_give_oracle_results(gen: torch.Generator) -> None:
    """In-place ReLUs after every layer kind: the mirror's forward walk must not lose the pre-ReLU values."""
    torch.manual_seed(2)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 6, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 6, 3),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.Dropout(inplace=True),
            nn.ReLU(inplace=True),
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        model[5].running_var.uniform_(0.5, 2.0)
        model[5].weight.uniform_(-1.0, 1.0)
    x = images(gen, 2, 3, 12, 12)
    before = x.clone()
    every_layer(model, x, gen)
    assert torch.equal(x, before)


class TorchvisionStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 3))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(4 * 2 * 3, 8), nn.ReLU(inplace=True), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def test_torchvision_style_model(gen: torch.Generator) -> None:
    torch.manual_seed(3)
    model = TorchvisionStyle().double().eval()
    mirror = every_layer(model, images(gen, 2, 3, 9, 9), gen, {"flatten": "<classifier"})
    assert mirror.layer_names == [
        "features.0",
        "features.1",
        "features.2",
        "features",
        "avgpool",
        "flatten",
        "classifier.0",
        "classifier.1",
        "classifier.2",
        "classifier.3",
        "classifier",
    ]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        return F.relu(self.conv2(y) + y)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


def test_a_residual_model_matches_the_oracle(gen: torch.Generator) -> None:
    """Fan-out (y feeds conv2 and the addition) and the addition itself, at every layer."""
    torch.manual_seed(4)
    model = Residual().double().eval()
    mirror = every_layer(
        model,
        images(gen, 2, 3, 9, 9),
        gen,
        {"relu": Call(F.relu), "add": Call(torch.Tensor.add), "relu_1": Call(F.relu, 1)},
    )
    assert mirror.layer_names == ["conv1", "relu", "conv2", "add", "relu_1"]


def test_an_untraceable_model_is_refused() -> None:
    with pytest.raises(deconv.UnsupportedGraphError, match="Untraceable.*torch.fx"):
        deconv.build_mirror(Untraceable())


@pytest.mark.parametrize(
    "forward, words",
    [
        (lambda self, x: torch.sigmoid(self.conv(x)), ["'sigmoid'", "torch.sigmoid", "register_mirror"]),
        (lambda self, x: self.conv(x) * self.conv(x), ["'mul'", "input-dependent"]),
        (lambda self, x: self.conv(x).flatten(), ["'flatten'", "batch"]),
        (lambda self, x: torch.cat([self.conv(x), self.conv(x)], 0), ["'cat'", "batch"]),
    ],
)
def test_unsupported_functions_are_named(forward, words: list[str]) -> None:
    model = type("Custom", (nn.Module,), {"forward": forward})()
    model.conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(model)
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_reshape_that_mixes_the_batch_is_named_when_it_runs() -> None:
    model = type("Custom", (nn.Module,), {"forward": lambda self, x: self.conv(x).view(-1, 4)})()
    model.conv = nn.Conv2d(3, 4, 3)
    mirror = deconv.build_mirror(model)
    with pytest.raises(deconv.InputError) as error:
        mirror.project(torch.randn(2, 3, 5, 5), layer="conv", channel=0)
    message = str(error.value)
    assert "\n" not in message and "'view'" in message and "batch" in message, message


class _Counting(nn.Module):
    """A model whose Python forward changes its own state: a buffer, a plain counter, a replaced buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("last", torch.zeros(2))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last = torch.ones(2)
        self.seen += 1
        return torch.relu(self.conv(x))


def test_building_a_mirror_leaves_the_models_buffers_attributes_and_flags_as_they_were() -> None:
    model = _Counting().train()
    calls, last = model.calls, model.last
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mirror = deconv.build_mirror(model)
    assert model.calls is calls and model.last is last and model.seen == 0
    assert model.training and model.conv.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    mirror.project(torch.randn(1, 1, 6, 6), layer="conv", channel=0)  # projections call the layers, not forward
    assert float(model.calls) == 0 and model.seen == 0


class InPlaceGain(nn.Module):
    """timm's NF-Net block ending: ``out.mul_(gain)`` whose result is not used, then ``out * alpha + x``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.gain = nn.Parameter(torch.tensor(0.3))
        self.head = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out.mul_(self.gain)
        out = F.relu(out * 2.0 + x)
        out.relu_()  # again in place, on a ReLU's output: the same values
        return self.head(out)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_a_tensor_changed_in_place_is_read_changed_by_what_comes_after(gen: torch.Generator, rule: str) -> None:
    torch.manual_seed(3)
    model = InPlaceGain().double().eval()
    x = images(gen, 2, 3, 8, 8)
    mirror = deconv.build_mirror(model)
    selections = oracle.selections_at(model, x, ["head", "conv"], 3, gen, {})
    expected = oracle.project(model, x, selections, {}, rule=rule)
    oracle.assert_matches(mirror.project_many(x, selections, rule=rule), expected, rtol=1e-9)

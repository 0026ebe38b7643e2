"""Forward passes torch.fx alone cannot trace (issue 20, part 2): branches on tensors' shapes, traced for the
images' shape (``build_mirror(model, shape=(C, H, W))``) and again for images of another shape; outputs that are
dicts, tuples or ``ModelOutput``s, mirrored from one field (``output=``); branches on tensors' values or on the
batch size, refused naming the module and the source line. Each accepted model is checked against the oracle
under every rule in float64."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import oracle
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

import deconv

RULES = ("deconvnet", "guided", "gradient")


def line_of(function: object, text: str) -> str:
    """``FILE:LINE`` of the line of ``function``'s source holding ``text``."""
    lines, first = inspect.getsourcelines(function)
    return f"{inspect.getsourcefile(function)}:{first + next(i for i, s in enumerate(lines) if text in s)}"


class SamePad(nn.Module):
    """TensorFlow's "same" padding, computed from the input's shape as timm's ``pad_same`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / 2) - 1) * 2 + 3 - h, 0)
        pad_w = max((math.ceil(w / 2) - 1) * 2 + 3 - w, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return x


class Branchy(nn.Module):
    """A stride-2 convolution after "same" padding, a check of the channel count (Hugging Face's embedders), a
    second convolution and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = SamePad()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2)
        self.conv2 = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.conv1.in_channels:
            raise ValueError("wrong channel count")
        x = F.relu(self.conv1(self.pad(x)))
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def branchy() -> nn.Module:
    torch.manual_seed(0)
    return Branchy().double().eval()


def assert_exact(mirror: deconv.Mirror, model: nn.Module, images: torch.Tensor, layers: list, taps: dict, gen) -> None:
    """Projections at ``layers`` within 1e-9 of the oracle's under every rule."""
    selections = oracle.selections_at(model, images, layers, 3, gen, taps)
    assert {s[1] for s in selections} == set(layers)
    for rule in RULES:
        expected = oracle.project(model, images, selections, taps, rule=rule)
        oracle.assert_matches(mirror.project_many(images, selections, rule=rule), expected, rtol=1e-9)


def test_a_forward_pass_that_branches_on_the_shape_is_traced_for_the_images_shape(gen: torch.Generator) -> None:
    model = branchy()
    images = torch.randn(3, 3, 13, 13, generator=gen, dtype=torch.float64)  # odd: "same" pads unevenly
    mirror = deconv.build_mirror(model, shape=(3, 13, 13))
    assert "pad" in mirror.layer_names
    taps = {mirror.output_layer: ""}
    assert_exact(mirror, model, images, ["conv1", "conv2", mirror.output_layer], taps, gen)


def test_images_of_another_shape_get_a_mirror_traced_for_them(gen: torch.Generator) -> None:
    """Traced for 13x13 the padding is (1, 1); 12x12 images need (0, 1): the pads of 13x13 would give other
    projections of the same shape."""
    model = branchy()
    mirror = deconv.build_mirror(model, shape=(3, 13, 13))
    images = torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    assert mirror.shape("conv1", (3, 12, 12)) == (6, 6, 6)
    assert_exact(mirror, model, images, ["conv1", "conv2"], {}, gen)
    odd = torch.randn(2, 3, 13, 13, generator=gen, dtype=torch.float64)
    assert_exact(mirror, model, odd, ["conv1", "conv2"], {}, gen)


def test_a_branch_on_the_shape_without_a_shape_is_refused_naming_the_module_and_line() -> None:
    with pytest.raises(deconv.UnsupportedGraphError) as error:
        deconv.build_mirror(branchy())
    message = str(error.value)
    assert "\n" not in message, message
    assert "Branchy.forward" in message and line_of(Branchy.forward, "x.shape[1] !=") in message, message
    assert "shape=(C, H, W)" in message, message


def test_a_branch_inside_a_module_names_that_module_and_its_line() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), SamePad(), nn.Conv2d(3, 2, 3, stride=2)).double().eval()
    with pytest.raises(deconv.UnsupportedGraphError) as error:
        deconv.build_mirror(model)
    message = str(error.value)
    assert "module '1'" in message and "SamePad" in message and "shape=(C, H, W)" in message, message
    assert line_of(SamePad.forward, "pad_h = max(") in message, message


class ValueGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return F.relu(x)
        return x


@pytest.mark.parametrize("shape", [None, (3, 8, 8)])
def test_a_branch_on_a_tensors_values_is_refused_naming_the_module_and_line(shape) -> None:
    inner = nn.Sequential(nn.Conv2d(3, 3, 1), ValueGate())
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(inner)).double().eval()
    with pytest.raises(deconv.UnsupportedGraphError) as error:
        deconv.build_mirror(model, shape=shape)
    message = str(error.value)
    assert "\n" not in message and "data-dependent control flow" in message, message
    assert "module '1.0.1'" in message and "ValueGate" in message, message
    assert line_of(ValueGate.forward, "if x.sum() > 0") in message, message


class BatchBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.shape[0] > 1:
            x = x - x.mean(0, keepdim=True)
        return x


def test_a_branch_on_the_batch_size_is_refused_naming_the_line() -> None:
    with pytest.raises(deconv.UnsupportedGraphError, match="batch size") as error:
        deconv.build_mirror(BatchBranch().double(), shape=(3, 8, 8))
    assert line_of(BatchBranch.forward, "if x.shape[0] > 1") in str(error.value)


@dataclass
class Outputs:
    """A plain dataclass output (not a dict)."""

    features: torch.Tensor
    logits: torch.Tensor


class Heads(nn.Module):
    """Features and logits, returned as ``kind``: a dict, a tuple, a ``ModelOutput``, a dataclass or one field."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> object:
        features = F.relu(self.conv(x))
        logits = self.fc(features.mean((2, 3)))
        if labels is not None:  # a Hugging Face model's loss: not computed for the mirror
            raise AssertionError("traced with labels")
        if self.kind == "dict":
            return {"features": features, "logits": logits}
        if self.kind == "features":
            return {"features": features, "pooled": logits}
        if self.kind == "tuple":
            return logits, features
        if self.kind == "dataclass":
            return Outputs(features, logits)
        return ImageClassifierOutputWithNoAttention(logits=logits)


def heads(kind: str) -> nn.Module:
    torch.manual_seed(1)
    return Heads(kind).double().eval()


@pytest.mark.parametrize("kind", ["dict", "model_output", "dataclass"])
def test_a_dict_or_model_output_is_mirrored_from_its_logits(kind: str, gen: torch.Generator) -> None:
    model = heads(kind)
    mirror = deconv.build_mirror(model)
    images = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    taps = {mirror.output_layer: lambda m, x: m(x).logits if kind != "dict" else m(x)["logits"]}
    assert mirror.output_layer == "fc"
    assert_exact(mirror, model, images, ["conv", "fc"], taps, gen)


@pytest.mark.parametrize(("kind", "output", "layer"), [("dict", "features", "relu"), ("tuple", 0, "fc")])
def test_output_picks_a_field_or_an_index(kind: str, output, layer: str, gen: torch.Generator) -> None:
    model = heads(kind)
    mirror = deconv.build_mirror(model, output=output)
    assert mirror.output_layer == layer
    images = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    assert_exact(mirror, model, images, [layer], {layer: lambda m, x: m(x)[output]}, gen)


@pytest.mark.parametrize(
    ("kind", "output", "words"),
    [
        ("dict", "loss", ["output='loss' is not a field", "'features', 'logits'"]),
        ("features", None, ["returns several", "'features', 'pooled'", "output="]),
        ("tuple", None, ["returns several", "0, 1"]),
        ("tuple", "logits", ["output='logits' is not a field", "0, 1"]),
        ("tuple", True, ["output=True is not a field", "0, 1"]),  # not index 1
        ("model_output", "loss", ["'logits'"]),  # loss is None: not a field to mirror
    ],
)
def test_a_missing_field_is_refused_listing_the_fields(kind: str, output, words: list[str]) -> None:
    with pytest.raises(deconv.UnsupportedGraphError) as error:
        deconv.build_mirror(heads(kind), output=output)
    message = str(error.value)
    assert "\n" not in message and "Heads" in message and all(w in message for w in words), message


def test_an_output_field_of_a_model_that_returns_a_tensor_is_refused() -> None:
    with pytest.raises(deconv.UnsupportedGraphError, match="returns one value, not a dict or tuple"):
        deconv.build_mirror(nn.Sequential(nn.Conv2d(3, 2, 1)), output="logits")


@pytest.mark.parametrize("shape", [(3, 8), (3, 8, 0), (3, 8.0, 8), "3x8x8", (True, 8, 8)])
def test_a_shape_that_is_not_c_h_w_is_refused(shape) -> None:
    with pytest.raises(deconv.InputError, match=r"\(C, H, W\)"):
        deconv.build_mirror(branchy(), shape=shape)


class DeviceBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.device.type == "meta":  # true only while tracing on meta tensors
            return x * 0
        return x


def test_a_branch_on_the_device_is_refused_not_taken_for_the_meta_device() -> None:
    with pytest.raises(deconv.UnsupportedGraphError, match="more than tensors' shapes") as error:
        deconv.build_mirror(DeviceBranch().double(), shape=(3, 8, 8))
    assert line_of(DeviceBranch.forward, 'if x.device.type == "meta"') in str(error.value)


def test_a_shape_function_is_called_only_when_the_forward_pass_needs_the_shape(gen: torch.Generator) -> None:
    """The commands pass the first image's shape this way: a model torch.fx traces reads no image."""
    asked = []

    def shape() -> tuple[int, int, int]:
        asked.append(True)
        return (3, 13, 13)

    deconv.build_mirror(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()), shape=shape)
    assert not asked
    model = branchy()
    mirror = deconv.build_mirror(model, shape=shape)
    assert asked == [True]
    images = torch.randn(2, 3, 13, 13, generator=gen, dtype=torch.float64)
    assert_exact(mirror, model, images, ["conv1", "conv2"], {}, gen)
    with pytest.raises(deconv.InputError, match=r"\(C, H, W\)"):
        deconv.build_mirror(model, shape=lambda: (3, 13))


class ShapePad(nn.Module):
    """Padding computed from the input's shape in a forward pass plain ``torch.fx`` traces (no branch): the pad
    sizes are fx nodes, which only a trace with values for the images' shape turns into numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [0, x.shape[-1] % 2, 1, x.shape[-2] % 3])
        return torch.relu(self.conv(x))


def test_sizes_computed_from_the_shape_without_a_branch_are_traced_for_the_images_shape(gen: torch.Generator) -> None:
    torch.manual_seed(1)
    model = ShapePad().double().eval()
    with pytest.raises(deconv.UnsupportedGraphError, match=r"layer 'pad' \(torch.nn.functional.pad\) takes a value "):
        deconv.build_mirror(model)
    mirror = deconv.build_mirror(model, shape=(2, 9, 9))
    for size in (9, 10, 11):  # each pads otherwise: traced again for each
        images = torch.randn(2, 2, size, size, generator=gen, dtype=torch.float64)
        assert_exact(mirror, model, images, ["conv"], {}, gen)

"""Occlusion sensitivity (Fig. 7) against a direct computation, one forward pass per square position."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import deconv
from deconv.analyses.occlusion import occlude, squares
from deconv.commands.main import main
from deconv.figures.draw import VIRIDIS, colormap

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "default.toml")


def _model() -> nn.Sequential:
    torch.manual_seed(5)
    return (
        nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 5 * 6, 4),
        )
        .double()
        .eval()
    )


def _direct(
    model: nn.Sequential,
    image: torch.Tensor,
    layer: int,
    channel: int,
    label: int,
    square: int,
    stride: int,
    fill: float,
):
    """Per position: occlude by hand (a clipped slice), run the model, read the maps."""
    h, w = image.shape[-2:]
    rows, cols = math.ceil(h / stride), math.ceil(w / stride)
    activation = torch.zeros(rows, cols, dtype=torch.float64)
    probability = torch.zeros(rows, cols, dtype=torch.float64)
    predicted = torch.zeros(rows, cols, dtype=torch.long)
    for i in range(rows):
        for j in range(cols):
            top = i * stride + stride // 2 - square // 2
            left = j * stride + stride // 2 - square // 2
            x = image.clone()
            x[:, max(top, 0) : max(top + square, 0), max(left, 0) : max(left + square, 0)] = fill
            with torch.no_grad():
                activation[i, j] = model[: layer + 1](x[None])[0, channel].sum()
                p = model(x[None]).softmax(1)[0]
            probability[i, j] = p[label]
            predicted[i, j] = p.argmax()
    return activation, probability, predicted


@pytest.mark.parametrize("square, stride, fill", [(4, 3, 0.0), (3, 1, 0.7), (5, 2, -1.0)])
def test_maps_match_one_forward_pass_per_position(gen: torch.Generator, square: int, stride: int, fill: float) -> None:
    model = _model()
    image = torch.randn(2, 11, 13, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    result = occlude(mirror, image, "4", square=square, stride=stride, fill=fill, batch_size=7)
    with torch.no_grad():
        clean = model[:5](image[None])[0]
        probabilities = model(image[None]).softmax(1)[0]
    assert result.channel == int(clean.flatten(1).amax(1).argmax())  # the strongest map of the clean image
    assert result.label == int(probabilities.argmax())
    activation, probability, predicted = _direct(model, image, 4, result.channel, result.label, square, stride, fill)
    assert result.activation.shape == (math.ceil(11 / stride), math.ceil(13 / stride))
    torch.testing.assert_close(result.activation.double(), activation, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.probability.double(), probability, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.predicted, predicted)
    torch.testing.assert_close(result.projection, mirror.project(image[None], "4", result.channel, "map")[0])
    assert result.clean_activation == pytest.approx(float(clean[result.channel].sum()))
    torch.testing.assert_close(result.clean_probabilities.double(), probabilities)


def test_chosen_channel_and_label_and_a_vector_layer(gen: torch.Generator) -> None:
    model = _model()
    image = torch.randn(2, 11, 13, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    result = occlude(mirror, image, "4", square=3, stride=2, channel=5, label=2, batch_size=1000)
    activation, probability, _ = _direct(model, image, 4, 5, 2, 3, 2, 0.0)
    torch.testing.assert_close(result.activation.double(), activation, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.probability.double(), probability, rtol=1e-5, atol=1e-6)
    logits = occlude(mirror, image, "6", square=3, stride=2, label=1)  # the class scores themselves
    torch.testing.assert_close(
        logits.activation.double(), _direct(model, image, 6, logits.channel, 1, 3, 2, 0.0)[0], rtol=1e-5, atol=1e-5
    )


def test_squares_are_centred_on_their_blocks_and_clipped() -> None:
    rows, cols = squares(5, 4, square=3, stride=2)
    assert rows.int().tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]  # centred on rows 1, 3, 5
    assert cols.int().tolist() == [[1, 1, 1, 0], [0, 0, 1, 1]]
    with pytest.raises(deconv.InputError):
        squares(5, 5, square=0, stride=1)


def test_bad_channel_or_label_is_refused(gen: torch.Generator) -> None:
    mirror = deconv.build_mirror(_model())
    image = torch.randn(2, 11, 13, generator=gen, dtype=torch.float64)
    with pytest.raises(deconv.SelectionError, match="channel 8"):
        occlude(mirror, image, "4", square=3, stride=2, channel=8)
    with pytest.raises(deconv.SelectionError, match="class 4"):
        occlude(mirror, image, "4", square=3, stride=2, label=4)


def test_command_on_the_embedded_default(tmp_path: Path) -> None:
    image, label = deconv.default_dataset()[0]
    file = tmp_path / "boot.png"
    Image.fromarray(((image[0] * 0.3530242 + 0.2860406).clamp(0, 1) * 255).round().byte().numpy(), "L").save(file)
    out = tmp_path / "run"
    args = [
        "occlusion",
        "--config",
        CONFIG,
        "--image",
        str(file),
        "--label",
        str(label),
        "--square",
        "8",
        "--stride",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    figure = Image.open(out / "occlusion" / "boot.png")
    assert figure.width > 1000 and figure.height > 224
    maps = {
        name: np.load(out / "occlusion" / "boot" / f"{name}.npy")
        for name in ("activation", "probability", "predicted", "projection")
    }
    assert maps["activation"].shape == maps["probability"].shape == maps["predicted"].shape == (14, 14)
    assert maps["projection"].shape == (1, 28, 28)
    assert ((0 <= maps["probability"]) & (maps["probability"] <= 1)).all() and maps["predicted"].max() < 10
    assert "occlusion/boot.png" in (out / "index.html").read_text()
    assert main(args) == 2  # the same image again needs --overwrite


def test_heat_map_colours_run_from_dark_to_light() -> None:
    shown = colormap(torch.linspace(-1.0, 3.0, 9)[None], 0.0, 2.0)[:, 0]  # (3, 9); clamped outside [0, 2]
    assert torch.allclose(shown[:, 0], VIRIDIS[0]) and torch.allclose(shown[:, 2], VIRIDIS[0])
    assert torch.allclose(shown[:, 6], VIRIDIS[-1]) and torch.allclose(shown[:, 8], VIRIDIS[-1])
    luminance = (torch.tensor([0.2126, 0.7152, 0.0722]) @ shown)[2:7]
    assert (luminance.diff() > 0).all()

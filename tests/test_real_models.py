"""Fitting real models: Caffe-style preprocessing, model arguments, model files beside their config,
torchvision weights from its cache (offline), and `project` on models that are not classifiers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconv.commands.common import Data, preprocess_from
from deconv.commands.main import main
from deconv.data import Preprocess
from deconv.zoo.models import load_model

NET = """
from torch import nn

def make(width=4, classes=0):
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), \
nn.Conv2d(width, 5, 3, padding=1), nn.ReLU()]
    if classes:
        layers += [nn.Flatten(), nn.Linear(5 * 8 * 8, classes)]
    return nn.Sequential(*layers)
"""


def test_caffe_preprocessing_scales_to_255_and_orders_bgr() -> None:
    pixels = np.array([[[10, 20, 30]]], dtype=np.uint8)  # one RGB pixel
    caffe = Preprocess(channels=3, mean=(104.0, 116.0, 122.0), pixel_scale=255, channel_order="BGR")
    x = caffe.tensor(pixels)
    assert x.flatten().tolist() == [30 - 104.0, 20 - 116.0, 10 - 122.0]  # B, G, R minus their means, on 0..255
    assert torch.allclose(caffe.denormalize(x).flatten(), torch.tensor([10.0, 20.0, 30.0]) / 255)  # RGB in 0..1 again
    plain = Preprocess(channels=3, mean=(0.5,))
    assert torch.allclose(plain.tensor(pixels).flatten(), torch.tensor([10.0, 20.0, 30.0]) / 255 - 0.5)
    with pytest.raises(ValueError, match="channel_order"):
        Preprocess(channel_order="GBR")
    with pytest.raises(ValueError, match="pixel_scale"):
        Preprocess(pixel_scale=0)


def _settings(**kw) -> Data:
    base = {
        "model": "x",
        "mean": [],
        "std": [],
        "image_channels": 3,
        "resize": 0,
        "crop": 0,
        "pixel_scale": 1.0,
        "channel_order": "RGB",
    }
    return Data.of({**base, **kw})


def test_a_mean_above_1_without_pixel_scale_is_warned_about(capsys) -> None:
    preprocess_from(_settings(mean=[104.0, 117.0, 123.0]), torch.nn.Conv2d(3, 1, 1), embedded=False)
    warning = capsys.readouterr().err.strip()
    assert "pixel_scale = 255" in warning and "0.485" in warning and "\n" not in warning
    preprocess_from(_settings(mean=[104.0, 117.0, 123.0], pixel_scale=255.0), torch.nn.Conv2d(3, 1, 1), embedded=False)
    preprocess_from(_settings(mean=[0.485, 0.456, 0.406]), torch.nn.Conv2d(3, 1, 1), embedded=False)
    assert capsys.readouterr().err == ""


def test_help_says_mean_and_std_are_on_the_0_1_scale(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["top9", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "mean to subtract, on the 0-1 scale" in text and "--pixel-scale" in text and "--channel-order" in text


def test_model_file_resolves_beside_its_config_and_model_args_reach_the_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "net.py").write_text(NET)
    (folder / "c.toml").write_text('model = "net.py:make"\nmodel_args = { width = 7 }\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the config's folder nor the model's
    assert main(["layers", "--config", str(folder / "c.toml")]) == 0
    assert "7x" in capsys.readouterr().out  # the first convolution has width 7 channels
    assert main(["layers", "--config", str(folder / "c.toml"), "--model-args", "width=3"]) == 0  # the flag wins
    assert "3x" in capsys.readouterr().out
    assert main(["layers", "--config", str(folder / "c.toml"), "--model-args", "depth=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert "make(depth=3) failed" in error and "\n" not in error


def test_torchvision_weights_load_from_its_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model = "torchvision.models:squeezenet1_0"`` with ``model_args = { weights = "IMAGENET1K_V1" }``: the
    file is taken from TORCH_HOME's cache under the name torchvision expects, never downloaded. (SqueezeNet:
    torchvision's smallest ImageNet model with weights, 5 MB; VGG16's file is 528 MB.)"""
    torchvision = pytest.importorskip("torchvision")
    weights = torchvision.models.SqueezeNet1_0_Weights.IMAGENET1K_V1
    torch.manual_seed(5)
    saved = torchvision.models.squeezenet1_0().state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(saved, cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = load_model("torchvision.models:squeezenet1_0", None, {"weights": "IMAGENET1K_V1"})
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.fixture()
def feature_net(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "net.py").write_text(NET)
    pixels = (torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    Image.fromarray(pixels, "RGB").save(tmp_path / "a.png")
    return tmp_path / "net.py", tmp_path / "a.png"


@pytest.mark.parametrize("flags", [["--top-classes", "3"], ["--target-class", "3"]])
def test_project_refuses_class_flags_on_a_model_without_class_outputs(
    feature_net, flags, tmp_path: Path, capsys
) -> None:
    net, image = feature_net
    assert main(["project", "--model", f"{net}:make", "--image", str(image), "--out", str(tmp_path / "o"), *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert "class vector (N, K)" in error and "(N, 5, 8, 8)" in error and "\n" not in error
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))
    ok = [
        "project",
        "--model",
        f"{net}:make",
        "--model-args",
        "classes=4",
        "--image",
        str(image),
        "--out",
        str(tmp_path / "c"),
        *flags,
    ]
    assert main(ok) == 0  # a classifier's output (N, K) is accepted


def test_project_without_channel_takes_the_strongest_channel(feature_net, tmp_path: Path) -> None:
    net, image = feature_net
    out = tmp_path / "o"
    model = load_model(f"{net}:make", None)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    flags = ["--checkpoint", str(tmp_path / "w.pt"), "--image", str(image), "--layer", "4", "--out", str(out)]
    assert main(["project", "--model", f"{net}:make", *flags]) == 0
    x = Preprocess(channels=3)(Image.open(image))[None]
    with torch.no_grad():
        strongest = int(model(x)[0].flatten(1).amax(1).argmax())
    assert [p.name for p in out.glob("project-*.png")] == [f"project-a-4-c{strongest}.png"]


def test_resolved_config_round_trips_tables(tmp_path: Path, feature_net) -> None:
    net, _ = feature_net
    out = tmp_path / "run"
    folder = tmp_path / "data"
    folder.mkdir()
    for n in range(3):
        Image.open(net.parent / "a.png").save(folder / f"img{n}.png")
    args = [
        "top9",
        "--model",
        f"{net}:make",
        "--model-args",
        "width=6",
        "--data",
        str(folder),
        "--layers",
        "1",
        "4",
        "--channels",
        "4=1-2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    resolved = (out / "config.toml").read_text()
    assert 'model_args = {"width" = 6}' in resolved and 'channels = {"4" = "1-2"}' in resolved
    assert main(["top9", "--config", str(out / "config.toml"), "--overwrite", "--no-progress"]) == 0
    records = json.loads((out / "top9.json").read_text())
    assert {r["channel"] for r in records if r["layer"] == "4"} == {1, 2}

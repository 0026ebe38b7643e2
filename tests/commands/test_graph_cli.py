"""The command line on a branching CNN: torchvision's ResNet-18 over a folder of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensor_dataset import Tensors

import deconv
from deconv.analyses.top9 import scan
from deconv.commands.main import main
from deconv.commands.top9 import conv_layers

MODEL = """
import torch, torchvision

def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resnet")
    (root / "models.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    (root / "photos" / "nested").mkdir(parents=True)
    for i in range(6):
        pixels = (rng.random((40, 40, 3)) * 255).astype("uint8")
        pixels[10:30, 5 + 3 * i : 12 + 3 * i] = 255
        Image.fromarray(pixels).save(root / "photos" / ("nested" if i % 2 else "") / f"photo{i}.png")
    return root


def test_top9_on_resnet18_names_the_block_outputs(folder: Path, capsys) -> None:
    out = folder / "run"
    args = [
        "top9",
        "--model",
        f"{folder}/models.py:resnet18",
        "--data",
        str(folder / "photos"),
        "--resize",
        "32",
        "--layers",
        "layer1.0",
        "layer2.1",
        "--top",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0, capsys.readouterr().err
    records = json.loads((out / "top9.json").read_text())
    assert {r["layer"] for r in records} == {"layer1.0", "layer2.1"} and len(records) == (64 + 128) * 3
    sheets = sorted(p.name for p in (out / "sheets").iterdir())
    assert sheets and all(name.startswith(("layer1.0", "layer2.1")) for name in sheets), sheets
    report = (out / "index.html").read_text()
    assert "layer1.0" in report and "layer2.1" in report


def test_default_layers_of_a_branching_model_are_its_blocks() -> None:
    torchvision = pytest.importorskip("torchvision")
    mirror = deconv.build_mirror(torchvision.models.resnet18().eval())
    assert conv_layers(mirror) == mirror.blocks() == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def test_project_and_layers_commands_on_resnet18(folder: Path, capsys) -> None:
    common = ["--model", f"{folder}/models.py:resnet18", "--resize", "32"]
    assert main(["layers", *common, "--data", str(folder / "photos")]) == 0
    listing = capsys.readouterr().out
    assert "layer3.1 " in listing and "layer1.0.relu:1" in listing
    image = str(folder / "photos" / "photo0.png")
    assert main(["project", *common, "--image", image, "--top-classes", "3", "--out", str(folder / "p")]) == 0
    assert (
        main(
            ["project", *common, "--image", image, "--layer", "layer3.1", "--channel", "5", "--out", str(folder / "p2")]
        )
        == 0
    )
    assert any(p.suffix == ".png" for p in (folder / "p2").iterdir())


def test_scans_of_a_branching_model_resume_and_shard_exactly() -> None:
    """The scan over a ResNet block equals itself cut into shards and into a resumed run."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    mirror = deconv.build_mirror(torchvision.models.resnet18(num_classes=4).double().eval())
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dataset = Tensors(images)
    whole = scan(mirror, dataset, ["layer2.0", "layer3.1"], k=3, batch_size=4, progress=False)
    first = scan(mirror, dataset, ["layer2.0", "layer3.1"], k=3, batch_size=4, indices=range(0, 10, 2), progress=False)
    second = scan(mirror, dataset, ["layer2.0", "layer3.1"], k=3, batch_size=4, indices=range(1, 10, 2), progress=False)
    first.merge(second)
    assert [r.to_json() for r in first.records(dataset)] == [r.to_json() for r in whole.records(dataset)]
    half = scan(mirror, dataset, ["layer2.0", "layer3.1"], k=3, batch_size=4, indices=range(5), progress=False)
    resumed = scan(mirror, dataset, ["layer2.0", "layer3.1"], k=3, batch_size=4, state=half, progress=False)
    assert [r.to_json() for r in resumed.records(dataset)] == [r.to_json() for r in whole.records(dataset)]

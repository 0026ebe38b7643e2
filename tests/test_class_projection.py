"""Class projections: ``deconv project --target-class K`` and the top-classes sheet, on the embedded
default and on torchvision-style models (features, avgpool, ``torch.flatten``, classifier)."""

from __future__ import annotations

import re
from pathlib import Path

import oracle
import pytest
import torch
from PIL import Image

import deconv
from deconv.commands.main import main
from deconv.data import Preprocess, load_image
from deconv.zoo.models import load_model

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "default.toml")
TINY_VGG = """
import torch
from torch import nn

class TinyVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(72, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 7))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

def make():
    torch.manual_seed(0)
    return TinyVGG()
"""


def _printed(stdout: str) -> list[tuple[str, float]]:
    """The ``N. name  p%`` lines of ``project --top-classes``."""
    return [(name, float(p)) for name, p in re.findall(r"^\d+\. (.+?)  ([\d.]+)%$", stdout, re.M)]


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image, _ = deconv.default_dataset()[0]
    path = tmp_path_factory.mktemp("img") / "boot.png"
    Image.fromarray(((image[0] * 0.3530242 + 0.2860406).clamp(0, 1) * 255).round().byte().numpy(), "L").save(path)
    return path


def test_class_projection_of_the_default_matches_the_oracle() -> None:
    model = deconv.default_model().double()
    images = torch.stack([deconv.default_dataset()[i][0] for i in range(3)]).double()
    k = int(model(images)[0].argmax())
    expected = oracle.project(model, images, [(i, "", k) for i in range(3)])
    oracle.assert_matches(deconv.build_mirror(model).project(images, target_class=k), expected, min_nonzero=1.0)


def test_default_model_target_class_and_top_classes(tmp_path: Path, boot: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["project", "--config", CONFIG, "--image", str(boot), "--target-class", "9", "--out", str(tmp_path)]) == 0
    )
    assert Image.open(tmp_path / "project-boot-class9.png").width >= 2 * 256
    capsys.readouterr()
    assert (
        main(["project", "--config", CONFIG, "--image", str(boot), "--top-classes", "5", "--out", str(tmp_path)]) == 0
    )
    printed = _printed(capsys.readouterr().out)
    assert [name for name, _ in printed][0] == "Ankle boot" and len(printed) == 5
    assert [p for _, p in printed] == sorted((p for _, p in printed), reverse=True)
    sheet = Image.open(tmp_path / "project-boot-top5.png")
    assert sheet.width >= 6 * 160 and sheet.height >= 160
    assert (tmp_path / "index.html").is_file()


def test_torchvision_style_model_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tiny_vgg.py").write_text(TINY_VGG)
    image = tmp_path / "photo.png"
    Image.fromarray(
        (torch.rand(20, 24, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy(), "RGB"
    ).save(image)
    flags = ["--model", f"{tmp_path / 'tiny_vgg.py'}:make", "--image", str(image), "--out", str(tmp_path / "out")]
    assert main(["project", *flags, "--target-class", "3"]) == 0
    assert (tmp_path / "out" / "project-photo-class3.png").is_file()
    capsys.readouterr()
    assert main(["project", *flags, "--top-classes", "4"]) == 0
    printed = _printed(capsys.readouterr().out)
    model = load_model(f"{tmp_path / 'tiny_vgg.py'}:make", None)
    with torch.no_grad():
        p = model(load_image(image, Preprocess(channels=3))[None]).softmax(1)[0]
    best = p.topk(4)
    assert [name for name, _ in printed] == [f"class {int(k)}" for k in best.indices]
    assert [v for _, v in printed] == pytest.approx([100 * float(v) for v in best.values], abs=0.06)


def test_real_torchvision_alexnet_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torchvision  # noqa: F401  (the test environment has it: `make test` installs it)

    (tmp_path / "alex.py").write_text(
        "import torch, torchvision\ndef make():\n    torch.manual_seed(0)\n"
        "    return torchvision.models.alexnet(weights=None, num_classes=5)\n"
    )
    image = tmp_path / "photo.png"
    Image.fromarray(
        (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy(), "RGB"
    ).save(image)
    flags = ["--model", f"{tmp_path / 'alex.py'}:make", "--image", str(image), "--out", str(tmp_path / "out")]
    assert main(["project", *flags, "--target-class", "1"]) == 0
    assert main(["project", *flags, "--top-classes", "3"]) == 0
    assert len(_printed(capsys.readouterr().out)) == 3
    assert (tmp_path / "out" / "project-photo-class1.png").is_file() and (
        tmp_path / "out" / "project-photo-top3.png"
    ).is_file()

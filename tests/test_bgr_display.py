"""A model that takes BGR (``channel_order = "BGR"``) is shown in RGB everywhere: its projections and the
images it sees come out in true colours in every command's pictures and in ``deconv serve``.

The oracle is a colour known in advance: the model's first convolution reads only its channel 2 (red,
in BGR order) with positive weights, so every projection is positive in that channel and zero in the
others, and is shown as red on grey (R near 255, G and B near 128). Drawn without the flip, it would
be blue on grey. The images are red patterns on black, so nothing else in a picture is either.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import deconv
from deconv.commands.common import Data, preprocess_from
from deconv.commands.main import main
from deconv.data import Preprocess, open_dataset
from deconv.serve.app import create_app
from deconv.serve.session import Session

NET = """
import torch
from torch import nn

def make(scale=1.0):
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    linear = nn.Linear(2 * 8 * 8, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 2] = scale  # the model's channel 2: red, in BGR order
        linear.weight.uniform_(0.1, 1.0, generator=torch.Generator().manual_seed(0))
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), linear)
"""


def red_and_blue(picture: Image.Image | Path | bytes) -> tuple[int, int]:
    """Pixels of ``picture`` that are red on grey (a positive red projection, shown as RGB) and that are
    blue on grey (the same projection with its channels left in BGR order)."""
    if isinstance(picture, bytes):
        picture = Image.open(io.BytesIO(picture))
    elif isinstance(picture, Path):
        picture = Image.open(picture)
    r, g, b = np.asarray(picture.convert("RGB")).astype(int).transpose(2, 0, 1)
    grey = lambda c: (c >= 110) & (c <= 146)  # noqa: E731
    return int(((r > 200) & grey(g) & grey(b)).sum()), int(((b > 200) & grey(r) & grey(g)).sum())


def assert_red(picture: Image.Image | Path | bytes) -> None:
    red, blue = red_and_blue(picture)
    assert red > 0 and blue == 0, f"{red} red-on-grey pixels, {blue} blue-on-grey pixels"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the model file, a config taking BGR, three red-pattern images and two checkpoints."""
    folder = tmp_path_factory.mktemp("bgr")
    (folder / "net.py").write_text(NET)
    images = folder / "images"
    images.mkdir()
    generator = np.random.default_rng(0)
    for n in range(3):
        pixels = np.zeros((16, 16, 3), np.uint8)
        pixels[..., 0] = generator.integers(0, 256, (16, 16)) * (generator.random((16, 16)) < 0.5)  # red only
        Image.fromarray(pixels).save(images / f"red{n}.png")
    (folder / "c.toml").write_text(
        f'model = "net.py:make"\ndata = "{images}"\nchannel_order = "BGR"\nprogress = false\n'
    )
    namespace: dict = {}
    exec(NET, namespace)
    for scale in (1, 2):
        torch.save(namespace["make"](scale).state_dict(), folder / f"epoch{scale}.pt")
    return folder


def test_the_red_pattern_model_is_what_the_oracle_says(setup: Path) -> None:
    """The oracle's premise: projections of this model are positive in the model's channel 2 only."""
    namespace: dict = {}
    exec(NET, namespace)
    model = namespace["make"]().eval()
    settings = {
        "model": "x",
        "mean": [],
        "std": [],
        "image_channels": 0,
        "resize": 0,
        "crop": 0,
        "pixel_scale": 1.0,
        "channel_order": "BGR",
    }
    image = preprocess_from(Data.of(settings), model, embedded=False)(Image.open(setup / "images" / "red0.png"))[None]
    assert image[0, 0].abs().max() == 0 and image[0, 2].max() > 0  # red lands in the model's channel 2
    projection = deconv.build_mirror(model).project(image, "1", 0)[0]
    assert projection[:2].abs().max() == 0 and projection[2].min() >= 0 and projection[2].max() > 0


def test_top9_sheets_show_bgr_projections_red(setup: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(
            ["top9", "--config", str(setup / "c.toml"), "--layers", "1", "--save-projections", "png", "--out", str(out)]
        )
        == 0
    )
    assert_red(out / "sheets" / "1-1.png")
    for saved in (out / "projections" / "1").glob("*.png"):
        assert_red(saved)


@pytest.mark.parametrize(
    "selection", [["--layer", "1", "--channel", "0"], ["--target-class", "1"], ["--top-classes", "2"]]
)
def test_project_shows_bgr_projections_red(setup: Path, tmp_path: Path, selection: list[str]) -> None:
    out = tmp_path / "out"
    args = ["project", "--config", str(setup / "c.toml"), "--image", str(setup / "images" / "red0.png"), *selection]
    assert main([*args, "--out", str(out)]) == 0
    (picture,) = out.glob("project-*.png")
    assert_red(picture)


def test_occlusion_shows_the_bgr_projection_red(setup: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "occlusion",
        "--config",
        str(setup / "c.toml"),
        "--image",
        str(setup / "images" / "red0.png"),
        "--layer",
        "1",
        "--stride",
        "4",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert_red(out / "occlusion" / "red0.png")


def test_evolution_shows_bgr_projections_red(setup: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoints = [str(setup / "epoch1.pt"), str(setup / "epoch2.pt")]
    args = [
        "evolution",
        "--config",
        str(setup / "c.toml"),
        "--checkpoints",
        *checkpoints,
        "--layer",
        "1",
        "--channels",
        "0",
        "1",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert_red(out / "evolution" / "1.png")


def test_serve_shows_bgr_projections_and_images_red(setup: Path) -> None:
    namespace: dict = {}
    exec(NET, namespace)
    preprocess = Preprocess(channels=3, channel_order="BGR")
    dataset = open_dataset(setup / "images", preprocess)
    client = TestClient(create_app(Session(deconv.build_mirror(namespace["make"]().eval()), dataset, preprocess), "t"))
    auth = {"Authorization": "token t"}
    for query in ["layer=1&channel=0", "layer=1&channel=1&map", "target_class=2"]:
        response = client.get(f"/api/project.png?image=0&{query}", headers=auth)
        assert response.status_code == 200
        assert_red(response.content)
    image = np.asarray(
        Image.open(io.BytesIO(client.get("/api/image.png?image=0", headers=auth).content)).convert("RGB")
    )
    assert image[..., 0].max() > 200 and image[..., 1:].max() == 0  # the image itself in its true colours

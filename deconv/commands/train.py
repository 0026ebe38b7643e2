"""``deconv train``: reproduce the embedded default's weights (see deconv/train.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..zoo.train import train
from . import command
from .common import require_at_least
from .config import option

OPTIONS = (
    option("out", str, "runs/train", "folder for checkpoints and metrics.json"),
    option("epochs", int, 20, "training epochs (20 reproduces the shipped weights)"),
    option("seed", int, 0, "random seed"),
    option("fashion_mnist", str, "/usr/share/datasets/fashion-mnist", "folder of the Fashion-MNIST idx files"),
)


@command("train", "train the embedded default ZFNet28 on Fashion-MNIST", OPTIONS)
def run(settings: dict[str, Any]) -> int:
    require_at_least(settings, epochs=1)
    if Path(settings["out"]).exists() and not Path(settings["out"]).is_dir():
        raise OutputError(f"{settings['out']}: exists and is not a folder; choose a folder for --out")
    metrics = train(
        settings["out"], epochs=settings["epochs"], seed=settings["seed"], data_dir=settings["fashion_mnist"]
    )
    print(metrics)
    return 0

"""``deconv train``: reproduce the embedded default's weights (see deconv/zoo/train.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputError
from ..zoo.train import Training, train
from . import command
from .common import require_at_least
from .config import Option, Settings, with_options


@with_options(
    Option("out", str, "runs/train", "folder for checkpoints and metrics.json"),
    Option("epochs", int, 20, "training epochs (20 reproduces the shipped weights)"),
    Option("seed", int, 0, "random seed"),
    Option("fashion_mnist", str, "/usr/share/datasets/fashion-mnist", "folder of the Fashion-MNIST idx files"),
)
class TrainSettings(Settings):
    """What `deconv train` trains, for how long, from which data."""

    out: str
    epochs: int
    seed: int
    fashion_mnist: str


OPTIONS = TrainSettings.options


@command("train", "train the embedded default ZFNet28 on Fashion-MNIST", TrainSettings)
def run(settings: TrainSettings) -> int:
    require_at_least(settings, epochs=1)
    if Path(settings.out).exists() and not Path(settings.out).is_dir():
        raise OutputError(f"{settings.out}: exists and is not a folder; choose a folder for --out")
    metrics = train(Training(settings.out, epochs=settings.epochs, seed=settings.seed, data_dir=settings.fashion_mnist))
    print(metrics)
    return 0

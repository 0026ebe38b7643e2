"""Train :class:`~deconv.zoo.models.ZFNet28` on Fashion-MNIST (produces the shipped weights).

python -m deconv.zoo.train --out runs/zfnet28 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import read_idx
from ..errors import DatasetError, DeconvError
from ..io import atomic_write, write_json
from .models import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ZFNet28

__all__ = ["DEFAULT_DATA_DIR", "Training", "train", "main"]

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
SHIFT = 2  # random translation of up to SHIFT pixels in each direction (zero padding)


@dataclass(frozen=True)
class Training:
    """What one :func:`train` run does: its output folder ``out`` and its settings (checked once)."""

    out: Path
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    checkpoint_epochs: tuple[int, ...] = (1, 2, 4, 8)
    limit: int | None = None
    threads: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or (self.limit is not None and self.limit < 1):
            raise ValueError(
                "need epochs >= 1, batch_size >= 1, lr > 0, limit None or >= 1; "
                f"got {self.epochs}, {self.batch_size}, {self.lr}, {self.limit}"
            )


@dataclass(frozen=True)
class _Fit:
    """The training state: the model, its optimizer and learning-rate schedule, the augmentation's generator."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator


Split = tuple[torch.Tensor, torch.Tensor]
"""Images ``(N, 1, 28, 28)`` float32 in [0, 1] and their labels ``(N,)`` int64."""


def _load_split(data_dir: Path, split: str, limit: int | None) -> Split:
    """The ``split`` (``"train"`` or ``"t10k"``) of the idx files in ``data_dir``, its first ``limit`` images."""
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [data_dir / f"{split}-{kind}-ubyte.gz", data_dir / f"{split}-{kind}-ubyte"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DatasetError(f"{data_dir}: no {candidates[0].name} (or uncompressed {candidates[1].name})")
        arrays.append(read_idx(found)[:limit])
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetError(
            f"{data_dir}: {split} split holds images of shape {images.shape} and {len(labels)} labels; "
            "expected (N, 28, 28) images and N labels"
        )
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels.astype("int64"))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random shift of up to ``SHIFT`` pixels: ``(B, 1, H, W)`` -> same."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    dy = torch.randint(0, 2 * SHIFT + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * SHIFT + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    return padded[torch.arange(b)[:, None, None, None], torch.zeros(1, 1, 1, 1, dtype=torch.long), rows, cols]


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(_normalize(x[i : i + batch_size])).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)


def _train_epoch(fit: _Fit, split: Split, settings: Training, desc: str) -> tuple[float, float]:
    """One pass over the training ``split`` in a random order; -> (mean loss, accuracy)."""
    x, y = split
    fit.model.train()
    order = torch.randperm(len(x), generator=fit.generator)
    loss_sum, correct = 0.0, 0
    batches = range(0, len(x), settings.batch_size)
    quiet = not settings.progress or not sys.stderr.isatty()  # a bar only on a terminal: in a log, the record line
    for start in tqdm(batches, desc=desc, disable=quiet, leave=False):
        index = order[start : start + settings.batch_size]
        logits = fit.model(_normalize(_augment(x[index], fit.generator)))
        loss = F.cross_entropy(logits, y[index])
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimizer.step()
        fit.schedule.step()
        loss_sum += loss.item() * len(index)
        correct += int((logits.argmax(1) == y[index]).sum())
    return loss_sum / len(x), correct / len(x)


def _epoch(fit: _Fit, settings: Training, epoch: int, train_split: Split, test_split: Split) -> dict[str, Any]:
    """Trains one epoch and tests the model: the epoch's record (losses, accuracies, seconds)."""
    start = time.perf_counter()
    loss, accuracy = _train_epoch(fit, train_split, settings, f"epoch {epoch}/{settings.epochs}")
    seconds = time.perf_counter() - start
    test_accuracy = _accuracy(fit.model, *test_split)
    return {
        "epoch": epoch,
        "train_loss": round(loss, 5),
        "train_accuracy": round(accuracy, 5),
        "test_accuracy": round(test_accuracy, 5),
        "seconds": round(seconds, 2),
    }


def _save(model: torch.nn.Module, path: Path) -> None:
    """Writes the ``state_dict`` of ``model`` to ``path``, atomically."""
    atomic_write(path, lambda f: torch.save(model.state_dict(), f))


def _fit(settings: Training, train_split: Split, test_split: Split) -> tuple[torch.nn.Module, list[dict]]:
    """A fresh ZFNet28 trained on ``train_split`` (``settings.seed`` seeds it, the global RNG is left as it
    was), with a checkpoint at each epoch of ``settings.checkpoint_epochs`` and the last: the model and its
    per-epoch records."""
    records = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        model = ZFNet28()
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
        steps = settings.epochs * math.ceil(len(train_split[0]) / settings.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=steps)
        fit = _Fit(model, optimizer, schedule, generator)
        for epoch in range(1, settings.epochs + 1):
            records.append(_epoch(fit, settings, epoch, train_split, test_split))
            if settings.progress:
                tqdm.write(json.dumps(records[-1]), file=sys.stderr)
            if epoch in settings.checkpoint_epochs or epoch == settings.epochs:
                _save(model, settings.out / f"epoch{epoch}.pt")
    return model, records


def _metrics(settings: Training, train_images: int, test_images: int, per_epoch: list[dict]) -> dict[str, Any]:
    """What ``metrics.json`` holds: the run's settings and data, its per-epoch records and final test accuracy."""
    return {
        "model": "ZFNet28",
        "dataset": "Fashion-MNIST",
        "train_images": train_images,
        "test_images": test_images,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "seed": settings.seed,
        "threads": settings.threads,
        "torch_version": torch.__version__,
        "per_epoch": per_epoch,
        "final_test_accuracy": per_epoch[-1]["test_accuracy"],
    }


def train(settings: Training) -> dict[str, Any]:
    """Train ZFNet28 on the Fashion-MNIST train split, testing on t10k after every epoch.

    Writes ``epoch{K}.pt`` (state_dict) for each K in ``checkpoint_epochs`` and for the last epoch,
    ``final.pt`` and ``metrics.json`` into ``out``, each atomically. ``limit`` trains on the
    first ``limit`` training images only. AdamW with a one-cycle learning-rate schedule peaking at
    ``lr``; augmentation is random horizontal flips and shifts of up to ``SHIFT`` pixels.
    Deterministic given ``seed`` and ``threads``; the global RNG state and thread count are restored
    afterwards. Returns the metrics that ``metrics.json`` holds.
    """
    settings.out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        train_split = _load_split(settings.data_dir, "train", settings.limit)
        test_split = _load_split(settings.data_dir, "t10k", None)
        model, per_epoch = _fit(settings, train_split, test_split)
        _save(model, settings.out / "final.pt")
        metrics = _metrics(settings, len(train_split[0]), len(test_split[0]), per_epoch)
        write_json(settings.out / "metrics.json", metrics)
    finally:
        torch.set_num_threads(previous_threads)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m deconv.zoo.train --out DIR [--epochs N] ...``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m deconv.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for checkpoints and metrics.json")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the Fashion-MNIST idx files")
    parser.add_argument(
        "--checkpoint-epochs", default="1,2,4,8", help="comma-separated epochs to save (the last is always saved)"
    )
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        checkpoint_epochs = tuple(int(e) for e in args.checkpoint_epochs.split(",") if e.strip())
    except ValueError:
        parser.error(f"--checkpoint-epochs must be comma-separated integers, got {args.checkpoint_epochs!r}")
    try:
        train(
            Training(
                args.out,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                data_dir=args.data_dir,
                checkpoint_epochs=checkpoint_epochs,
                limit=args.limit,
                threads=args.threads,
            )
        )
    except (DeconvError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

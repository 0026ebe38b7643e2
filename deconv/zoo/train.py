"""Train :class:`~deconv.zoo.models.ZFNet28` on Fashion-MNIST (produces the shipped weights).

python -m deconv.zoo.train --out runs/zfnet28 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import read_idx
from ..errors import DatasetError, DeconvError
from ..io import atomic_write, write_json
from .models import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ZFNet28

__all__ = ["DEFAULT_DATA_DIR", "train", "main"]

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
SHIFT = 2  # random translation of up to SHIFT pixels in each direction (zero padding)


def _load_split(data_dir: Path, split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images ``(N, 1, 28, 28)`` float32 in [0, 1], labels ``(N,)`` int64."""
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


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> tuple[float, float]:
    """One pass over ``x`` ``(N, 1, 28, 28)`` in [0, 1] in a random order; -> (mean loss, accuracy)."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    loss_sum, correct = 0.0, 0
    batches = range(0, len(x), batch_size)  # a bar only on a terminal: in a log, the epoch's record line is its report
    for start in tqdm(batches, desc=desc, disable=not progress or not sys.stderr.isatty(), leave=False):
        index = order[start : start + batch_size]
        logits = model(_normalize(_augment(x[index], generator)))
        loss = F.cross_entropy(logits, y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(index)
        correct += int((logits.argmax(1) == y[index]).sum())
    return loss_sum / len(x), correct / len(x)


def train(
    out_dir: str | os.PathLike[str],
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    checkpoint_epochs: Sequence[int] = (1, 2, 4, 8),
    limit: int | None = None,
    threads: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ZFNet28 on the Fashion-MNIST train split, testing on t10k after every epoch.

    Writes ``epoch{K}.pt`` (state_dict) for each K in ``checkpoint_epochs`` and for the last epoch,
    ``final.pt`` and ``metrics.json`` into ``out_dir``, each atomically. ``limit`` trains on the
    first ``limit`` training images only. AdamW with a one-cycle learning-rate schedule peaking at
    ``lr``; augmentation is random horizontal flips and shifts of up to ``SHIFT`` pixels.
    Deterministic given ``seed`` and ``threads``; the global RNG state and thread count are restored
    afterwards. Returns the metrics that ``metrics.json`` holds.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0 or (limit is not None and limit < 1):
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1, lr > 0, limit None or >= 1; got {epochs}, {batch_size}, {lr}, {limit}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x_train, y_train = _load_split(Path(data_dir), "train", limit)
        x_test, y_test = _load_split(Path(data_dir), "t10k", None)
        steps_per_epoch = math.ceil(len(x_train) / batch_size)
        metrics: dict[str, Any] = {
            "model": "ZFNet28",
            "dataset": "Fashion-MNIST",
            "train_images": len(x_train),
            "test_images": len(x_test),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "threads": threads,
            "torch_version": torch.__version__,
            "per_epoch": [],
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            model = ZFNet28()
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
            for epoch in range(1, epochs + 1):
                start = time.perf_counter()
                loss, accuracy = _train_epoch(
                    model,
                    optimizer,
                    schedule,
                    x_train,
                    y_train,
                    batch_size,
                    generator,
                    f"epoch {epoch}/{epochs}",
                    progress,
                )
                seconds = time.perf_counter() - start
                test_accuracy = _accuracy(model, x_test, y_test)
                record = {
                    "epoch": epoch,
                    "train_loss": round(loss, 5),
                    "train_accuracy": round(accuracy, 5),
                    "test_accuracy": round(test_accuracy, 5),
                    "seconds": round(seconds, 2),
                }
                metrics["per_epoch"].append(record)
                if progress:
                    tqdm.write(json.dumps(record), file=sys.stderr)
                if epoch in checkpoint_epochs or epoch == epochs:
                    atomic_write(out / f"epoch{epoch}.pt", lambda f: torch.save(model.state_dict(), f))
        atomic_write(out / "final.pt", lambda f: torch.save(model.state_dict(), f))
        metrics["final_test_accuracy"] = metrics["per_epoch"][-1]["test_accuracy"]
        write_json(out / "metrics.json", metrics)
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
    except (DeconvError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
